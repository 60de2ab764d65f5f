"""`--resume` with run-defining options (issue 13): the same value as the run's is accepted, a
differing one is refused, named with the run's value, before anything in the run changes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from adm_cli.cli.resume import _paths
from tests.cli_helpers import DATA, TINY, adm, adm_fails

# TINY with the run-defining options of a typical command line (architecture, optimisation, data)
COMMAND = [DATA, *TINY, "--lr", "0.0001", "--channel-mult", "1,2", "--ema", "0.9,0.5", "--no-flip", "--schedule", "linear",
           "--precision", "fp32"]


def snapshot(run: Path) -> dict[str, str]:
    """Every file in the run (the lock file too) and its content's hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "run"
    adm("train-diffusion", "--out", run, *COMMAND, "--steps", 1)
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_the_same_command_with_resume_continues(run):
    adm("train-diffusion", "--out", run, *COMMAND, "--steps", 2, "--resume")
    assert (run / "checkpoints" / "step-00000002.pt").is_file()
    # equal values written differently (float forms, a preset's own value repeated) are equal
    adm("train-diffusion", "--out", run, "--resume", "--steps", 3, "--lr", "1e-4", "--ema", "0.90,0.50",
        "--channel-mult", "1.0,2.0", "--preset", "tiny", "--learn-sigma", "--precision", "fp32", "--quiet")
    assert (run / "checkpoints" / "step-00000003.pt").is_file()


def test_a_differing_option_is_refused_with_the_runs_value(run):
    before = snapshot(run)
    out = adm_fails("train-diffusion", "--out", run, "--resume", "--steps", 2, "--lr", "0.0002")
    assert out == "error: --lr 0.0002 differs from the run's 0.0001 (run.json); start a new run to change it\n"
    assert snapshot(run) == before


def test_every_differing_option_is_named_in_one_line(run):
    before = snapshot(run)
    out = adm_fails("train-diffusion", "--out", run, *COMMAND, "--resume", "--steps", 2,
                    "--lr", "0.0003", "--batch-size", "8", "--flip", "--ema", "0.9", "--schedule", "cosine", "--predict-x0")
    assert "--lr 0.0003 differs from the run's 0.0001" in out
    assert "--batch-size 8 differs from the run's 4" in out
    assert "--flip differs from the run's --no-flip" in out
    assert "--ema 0.9 differs from the run's train.ema_rates 0.9,0.5" in out
    assert "--schedule cosine differs from the run's linear" in out
    assert "--predict-x0 differs from the run's diffusion.mean_type epsilon" in out
    assert out.rstrip().endswith("(run.json); start a new run to change them")
    assert "--steps" not in out and "--model-channels" not in out  # equal or resumable: not named
    assert snapshot(run) == before


def test_preset_and_data_options_are_compared(run):
    # presets are not stored: --preset is compared with the command line in run.json
    assert "--preset small differs from the run's tiny" in adm_fails("train-diffusion", "--out", run, "--resume", "--preset", "small")
    out = adm_fails("train-diffusion", "--out", run, "--resume", "--image-size", "16", "--labels", "none")
    assert "--image-size 16 differs from the run's 8" in out and "--labels none differs from the run's auto" in out
    assert "--no-class-cond differs from the run's unet.num_classes 8" in adm_fails(
        "train-diffusion", "--out", run, "--resume", "--no-class-cond")


def test_classifier_resume_compares_its_options(tmp_path):
    common = ["--model-channels", "32", "--num-res-blocks", "1", "--batch-size", "4", "--log-every", "1", "--quiet",
              "--val-fraction", "0.25", "--clean"]
    run = tmp_path / "clf"
    adm("train-classifier", DATA, "--out", run, *common, "--steps", 1)
    adm("train-classifier", DATA, "--out", run, *common, "--steps", 2, "--resume")
    assert (run / "checkpoints" / "step-00000002.pt").is_file()
    before = snapshot(run)
    out = adm_fails("train-classifier", "--out", run, "--resume", "--val-fraction", "0.5", "--model-channels", "64")
    assert "--val-fraction 0.5 differs from the run's 0.25" in out and "--model-channels 64 differs from the run's 32" in out
    assert snapshot(run) == before


def test_options_land_in_run_json_by_name():
    stored = {"config": {"unet": {"model_channels": 32, "use_scale_shift_norm": True}, "train": {"lr": 1e-4}},
              "data": {"labels": "auto"}, "val_fraction": 0.1}
    assert _paths("lr", stored) == ["config.train.lr"]
    assert _paths("scale_shift_norm", stored) == ["config.unet.use_scale_shift_norm"]
    assert _paths("labels", stored) == ["data.labels"] and _paths("val_fraction", stored) == ["val_fraction"]
    assert _paths("min_snr_gamma", {**stored, "config": {"train": {"min_snr_gamma": 5.0}}}) == ["config.train.min_snr_gamma"]
    assert _paths("init", stored) == [] and _paths("preset", stored) == []  # compared with run.json's command
