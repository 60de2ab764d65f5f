"""The training loop end to end on tiny models: exact resume (also after SIGKILL), microbatching,
two-process DDP, non-finite steps, classifier and super-resolution training, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.checkpoint import load_model, read_checkpoint
from tests.cli_helpers import DATA, TINY, adm, adm_fails



def state(path: Path) -> dict:
    return read_checkpoint(path)


def assert_same_state(a: Path, b: Path, *, exact: bool = True, atol: float = 0.0) -> None:
    sa, sb = state(a), state(b)
    assert sa["step"] == sb["step"]
    pairs = [(sa["model"], sb["model"])] + [(sa["ema"][k], sb["ema"][k]) for k in sa["ema"]]
    for da, db in pairs:
        for k in da:
            if exact:
                assert torch.equal(da[k], db[k]), k
            else:
                diff = float((da[k] - db[k]).abs().max())
                assert diff <= atol, f"{k}: max difference {diff:.3g} > {atol:.3g}"
    if exact:
        oa, ob = sa["train_state"]["optimizer"]["state"], sb["train_state"]["optimizer"]["state"]
        for k in oa:
            assert torch.equal(oa[k]["exp_avg_sq"], ob[k]["exp_avg_sq"])


def test_train_sample_and_info(tmp_path):
    run = tmp_path / "run"
    out = adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 3, "--preview-every", 3, "--preview-images", 4)
    ckpt = Path(out.strip().splitlines()[-1])
    assert ckpt == run / "checkpoints" / "step-00000003.pt"
    assert (run / "previews" / "step-00000003.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "mse", "vb", "lr", "images_per_s", "grad_norm"} <= set(records[-1])
    assert any(k.startswith("loss_q") for k in records[-1])
    description = json.loads((run / "run.json").read_text())
    assert description["config"]["unet"]["num_classes"] == 8 and description["config"]["train"]["loss"] == "hybrid"
    loaded = load_model(run)  # a run directory means its newest checkpoint
    assert loaded.step == 3 and loaded.config.image_size == 8
    samples = tmp_path / "s.npz"
    adm("sample", run, "-n", 2, "--ddim", 5, "--out", samples, "--quiet")
    assert np.load(samples)["arr_0"].shape == (2, 8, 8, 3)


def test_resume_continues_exactly(tmp_path):
    """6 steps in one go == 3 steps, stop, resume to 6 (with dropout, flips, loss-aware t)."""
    opts = [*TINY, "--dropout", "0.1", "--timestep-sampling", "loss-second-moment", "--ema", "0.9,0.5"]
    adm("train-diffusion", DATA, "--out", tmp_path / "a", *opts, "--steps", 6)
    adm("train-diffusion", DATA, "--out", tmp_path / "b", *opts, "--steps", 3)
    adm("train-diffusion", "--out", tmp_path / "b", "--resume", "--steps", 6, "--quiet", "--log-every", 1)
    assert_same_state(tmp_path / "a/checkpoints/step-00000006.pt", tmp_path / "b/checkpoints/step-00000006.pt")
    lines_a = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines_a] == [r["loss"] for r in lines_b]


def test_microbatches_accumulate_to_the_full_batch(tmp_path):
    exact = ["--precision", "fp32"]  # the tolerance is fp32's (auto is bf16 on a CPU with native bf16)
    adm("train-diffusion", DATA, "--out", tmp_path / "full", *TINY, *exact, "--steps", 2)
    adm("train-diffusion", DATA, "--out", tmp_path / "micro", *TINY, *exact, "--steps", 2, "--microbatch", 1)
    assert_same_state(tmp_path / "full/checkpoints/step-00000002.pt", tmp_path / "micro/checkpoints/step-00000002.pt", exact=False, atol=2e-5)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    cmd = [sys.executable, "-m", "adm_cli", "train-diffusion", DATA, *TINY, "--steps", "40", "--save-every", "2"]
    subprocess.run([*cmd, "--out", str(tmp_path / "ref")], check=True, env=_env(), capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(run)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(int(p.stem[5:]) >= 4 for p in (run / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for p in (run / "checkpoints").glob("step-*.pt"):
        read_checkpoint(p)  # every checkpoint left behind is whole
    subprocess.run([*cmd[:4], "--out", str(run), "--resume", "--steps", "40", "--quiet"], check=True, env=_env(), capture_output=True)
    assert_same_state(tmp_path / "ref/checkpoints/step-00000040.pt", run / "checkpoints/step-00000040.pt")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_equal_one(tmp_path):
    """Same losses at every step; weights equal up to Adam amplifying float32 reduction-order
    differences in near-zero gradients (measured 1e-5 after 3 steps at lr 3e-4; a wrong split
    of the batch moves weights by ~lr per step)."""
    cmd = ["train-diffusion", DATA, *TINY, "--steps", "3", "--timestep-sampling", "loss-second-moment", "--precision", "fp32"]
    adm(*cmd, "--out", tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", "-m", "adm_cli"]
    subprocess.run([*torchrun, *cmd, "--out", str(tmp_path / "two")], check=True, env=_env(), capture_output=True, timeout=300)
    assert_same_state(tmp_path / "one/checkpoints/step-00000003.pt", tmp_path / "two/checkpoints/step-00000003.pt", exact=False, atol=1e-4)
    one = [json.loads(x)["loss"] for x in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x)["loss"] for x in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(one, two, rtol=1e-5)


def test_non_finite_gradients_skip_the_step(tmp_path, monkeypatch):
    """A NaN loss at one step leaves the weights untouched and is counted, never poisons them."""
    from adm_cli.train import diffusion as dmod

    original = dmod.DiffusionTask.terms
    calls = {"n": 0}

    def poisoned(self, net, inputs):
        terms = original(self, net, inputs)
        calls["n"] += 1
        if calls["n"] == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(dmod.DiffusionTask, "terms", poisoned)
    adm("train-diffusion", DATA, "--out", tmp_path / "r", *TINY, "--steps", 1)
    adm("train-diffusion", "--out", tmp_path / "r", "--resume", "--steps", 2, "--quiet")
    a, b = state(tmp_path / "r/checkpoints/step-00000001.pt"), state(tmp_path / "r/checkpoints/step-00000002.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.isfinite(v).all() for v in b["model"].values())
    last = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped"] == 1.0


def test_label_dropout_uses_a_null_class(tmp_path):
    adm("train-diffusion", DATA, "--out", tmp_path / "r", *TINY, "--steps", 1, "--label-dropout", "0.5")
    loaded = load_model(tmp_path / "r")
    assert loaded.config.null_class and loaded.model.label_emb.num_embeddings == 9


def test_super_resolution_training(tmp_path):
    adm("train-diffusion", "synthetic:16", "--out", tmp_path / "sr", *TINY, "--image-size", "16", "--low-res-size", "8", "--steps", 1)
    assert load_model(tmp_path / "sr").kind == "super-res"


def test_classifier_training_and_guidance(tmp_path):
    adm("train-diffusion", DATA, "--out", tmp_path / "d", *TINY, "--steps", 1)
    adm(
        "train-classifier", DATA, "--out", tmp_path / "c", "--diffusion", tmp_path / "d", "--model-channels", "32",
        "--num-res-blocks", "1", "--batch-size", "4", "--steps", 2, "--log-every", "1", "--val-fraction", "0.25", "--quiet",
    )
    record = json.loads((tmp_path / "c/metrics.jsonl").read_text().splitlines()[-1])
    assert {"acc@1", "acc@5", "val_acc@1", "val_acc@5", "val_loss"} <= set(record)
    assert any(k.startswith("val_acc@1_q") for k in record) and 0.0 <= record["val_acc@1"] <= 1.0
    clf = load_model(tmp_path / "c")
    assert clf.kind == "classifier" and clf.diffusion.steps == 50
    out = tmp_path / "g.npz"
    adm("sample", tmp_path / "d", "--classifier", tmp_path / "c", "--guidance", 2, "-n", 2, "--ddim", 5, "--out", out, "--quiet")
    assert np.load(out)["arr_0"].shape == (2, 8, 8, 3)


def test_classifier_resume_keeps_its_holdout(tmp_path):
    common = ["--model-channels", "32", "--num-res-blocks", "1", "--batch-size", "4", "--log-every", "1", "--quiet"]
    adm("train-classifier", DATA, "--out", tmp_path / "a", "--clean", *common, "--val-fraction", "0.5", "--steps", 2)
    adm("train-classifier", DATA, "--out", tmp_path / "b", "--clean", *common, "--val-fraction", "0.5", "--steps", 1)
    adm("train-classifier", "--out", tmp_path / "b", "--resume", "--log-every", 1, "--quiet", "--steps", 2)  # no --val-fraction
    assert_same_state(tmp_path / "a/checkpoints/step-00000002.pt", tmp_path / "b/checkpoints/step-00000002.pt")


def test_clean_classifier(tmp_path):
    adm("train-classifier", DATA, "--out", tmp_path / "c", "--clean", "--model-channels", "32", "--num-res-blocks", "1",
        "--batch-size", "4", "--steps", 1, "--log-every", "1", "--quiet", "--val-fraction", "0.25")
    record = json.loads((tmp_path / "c/metrics.jsonl").read_text().splitlines()[-1])
    assert "val_acc@1" in record and not any("_q" in k for k in record if k.startswith("val_acc"))


def test_user_errors(tmp_path):
    assert "DATA" in adm_fails("train-diffusion", "--out", tmp_path / "x", "--steps", 1)
    assert "not found" in adm_fails("train-diffusion", tmp_path / "nope", "--out", tmp_path / "x", "--steps", 1)
    assert "no run.json" in adm_fails("train-diffusion", "--out", tmp_path / "empty", "--resume", "--steps", 1)
    assert "learned variance" in adm_fails("train-diffusion", DATA, "--out", tmp_path / "y", *TINY, "--no-learn-sigma", "--loss", "hybrid", "--steps", 1)
    assert "preset" in adm_fails("train-diffusion", DATA, "--out", tmp_path / "y", "--preset", "huge", "--steps", 1)
    assert "--steps must be positive" in adm_fails("train-diffusion", DATA, "--out", tmp_path / "y", *TINY, "--steps", 0)
    assert "divisible" in adm_fails("train-diffusion", DATA, "--out", tmp_path / "y", *TINY, "--steps", 1, "--image-size", "10", "--channel-mult", "1,2,2")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert "not empty" in adm_fails("train-diffusion", DATA, "--out", tmp_path / "busy", *TINY, "--steps", 1)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    np.savez(tmp_path / "unlabelled.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    assert "labelled" in adm_fails("train-classifier", tmp_path / "unlabelled.npz", "--out", tmp_path / "c", "--steps", 1)
    adm("train-diffusion", DATA, "--out", tmp_path / "d", *TINY, "--steps", 1)
    assert "--lr 0.001 differs from the run's 0.0003" in adm_fails("train-diffusion", "--out", tmp_path / "d", "--resume", "--lr", "1e-3")
    assert "diffusion run" in adm_fails("train-classifier", "--out", tmp_path / "d", "--resume", "--steps", 1)


@pytest.mark.parametrize("native_bf16", ["0", "1"])
def test_demo_runs_end_to_end(tmp_path, monkeypatch, native_bf16):
    """The demo in its default precision: fp32, and bf16 as on a CPU with native bf16 (where its
    classifier, stored in bf16, once ran outside autocast)."""
    monkeypatch.setenv("ADM_NATIVE_BF16", native_bf16)
    out = adm("demo", "--out", tmp_path / "demo", "--minutes", "0.05", "--per-class", 1, "--steps", 3, "--image-size", 8, "--quiet")
    for name in ("unguided.png", "guided.png", "unguided.npz", "guided.npz"):
        assert (tmp_path / "demo" / name).is_file()
    assert np.load(tmp_path / "demo" / "guided.npz")["arr_0"].shape == (8, 8, 8, 3)
    assert load_model(tmp_path / "demo" / "classifier").kind == "classifier"
    assert "grids" in out
    assert "not empty" in adm_fails("demo", "--out", tmp_path / "demo")


def test_default_classifier_guides_the_default_model(tmp_path):
    """Without --diffusion, train-classifier uses train-diffusion's default noise schedule, so the
    pair guides; a classifier on another schedule is refused (issue 15, item 11)."""
    small = ["--image-size", "8", "--model-channels", "32", "--batch-size", "4", "--steps", 1, "--quiet"]
    adm("train-diffusion", DATA, "--out", tmp_path / "d", *small, "--num-res-blocks", "1")
    clf = ["--model-channels", "32", "--num-res-blocks", "1", "--val-fraction", "0.25", *small]
    adm("train-classifier", DATA, "--out", tmp_path / "c", *clf)
    assert load_model(tmp_path / "c").diffusion.schedule == load_model(tmp_path / "d").diffusion.schedule
    sample = ["sample", tmp_path / "d", "--guidance", 2, "-n", 2, "--ddim", 5, "--quiet"]
    adm(*sample, "--classifier", tmp_path / "c", "--out", tmp_path / "g.npz")
    adm("train-classifier", DATA, "--out", tmp_path / "lin", *clf, "--schedule", "linear")
    assert "noise schedule" in adm_fails(*sample, "--classifier", tmp_path / "lin", "--out", tmp_path / "h.npz")
    assert not (tmp_path / "h.npz").exists()
