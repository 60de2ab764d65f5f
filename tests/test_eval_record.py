"""The reproducibility record of `adm evaluate` (--json, --record FILE) and the one-line warning
when FID comes from fewer samples or reference images than the papers use."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.evaluate import EvaluateOptions, evaluate
from adm_cli.evaluate.evaluator import comparability_warning
from adm_cli.reporting import Reporter
from adm_cli.version import __version__
from tests.eval_helpers import ToyFeatures, random_inception_state

runner = CliRunner()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "sam.npz", rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8))
    return tmp_path / "ref.npz", tmp_path / "sam.npz"


def test_record_carries_counts_hashes_network_and_version(inputs):
    ref, sam = inputs
    result = evaluate(ref, sam, ToyFeatures(), options=EvaluateOptions(metrics=("fid", "precision")), cache=False)
    record = result.as_json()["record"]
    assert record["adm_version"] == __version__
    assert record["samples"] == {"path": str(sam), "images": 9, "sha256": _sha256(sam)}
    assert record["reference"] == {"path": str(ref), "images": 12, "sha256": _sha256(ref), "statistics": "computed", "statistics_images": 12}
    assert record["network"] == {"id": "toy-v1"} and record["metrics"] == ["fid", "precision"]
    assert record["k"] == {"precision_recall": 3, "density_coverage": 5}


def test_precomputed_statistics_say_of_how_many_images(tmp_path, inputs):
    """An adm ref-batch file records how many images its μ/Σ are of (adm_meta); that count, not
    arr_0's, is what the small-reference warning looks at."""
    _, sam = inputs
    net = ToyFeatures()
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    feats = net(images)
    meta = np.frombuffer(json.dumps({"n_images": 20000}).encode(), np.uint8)
    np.savez(tmp_path / "ref_stats.npz", arr_0=images, mu=feats["pool"].mean(0), sigma=np.cov(feats["pool"], rowvar=False),
             mu_s=feats["spatial"].mean(0), sigma_s=np.cov(feats["spatial"], rowvar=False), adm_meta=meta)
    result = evaluate(tmp_path / "ref_stats.npz", sam, net, options=EvaluateOptions(metrics=("fid",)), cache=False)
    reference = result.record["reference"]
    assert reference["statistics"] == "precomputed" and reference["statistics_images"] == 20000 and reference["images"] == 6
    warning = comparability_warning(result.record, ("fid",))
    assert "9 samples (papers: 50,000)" in warning and "reference images" not in warning


@pytest.mark.parametrize(
    ("n_samples", "n_ref", "metrics", "expected"),
    [
        (50_000, 10_000, ("fid", "sfid"), None),
        (49_999, 10_000, ("fid",), "FID from 49,999 samples (papers: 50,000): biased upward and not comparable with published numbers"),
        (50_000, 9_999, ("sfid",), "FID from 9,999 reference images (papers: at least 10,000): biased upward and not comparable with published numbers"),
        (10, 20, ("fid",), "FID from 10 samples (papers: 50,000) and 20 reference images (papers: at least 10,000): biased upward and not comparable with published numbers"),
        (10, 20, ("precision", "recall", "is"), None),  # no Fréchet distance asked for
    ],
)
def test_comparability_warning(n_samples, n_ref, metrics, expected):
    record = {"samples": {"images": n_samples}, "reference": {"images": 5, "statistics_images": n_ref}}
    assert comparability_warning(record, metrics) == expected


def test_the_warning_is_one_stderr_line_before_the_work(inputs, capsys):
    evaluate(*inputs, ToyFeatures(), options=EvaluateOptions(metrics=("fid",)), cache=False, reporter=Reporter(quiet=True))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["warning: FID from 9 samples (papers: 50,000) and 12 reference images (papers: at least 10,000): "
                     "biased upward and not comparable with published numbers"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "inception.pth"
    torch.save(random_inception_state(), path)
    return path


def test_cli_record_file_equals_json_and_is_not_overwritten(inputs, weights, tmp_path):
    ref, sam = inputs
    record = tmp_path / "eval.json"
    args = ["evaluate", str(ref), str(sam), "--metrics", "precision,recall", "--inception-weights", str(weights), "--no-cache"]
    r = runner.invoke(app, [*args, "--json", "--record", str(record)])
    assert r.exit_code == 0, r.output
    written = json.loads(record.read_text())
    assert written == json.loads(r.stdout)
    assert written["record"]["network"]["weights_sha256"] == _sha256(weights) and written["record"]["network"]["resize"] == "tf1"
    assert written["record"]["network"]["known_as"] is None  # random weights: not a known file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.json")]  # no temporary left
    before = record.read_bytes()
    r = runner.invoke(app, [*args, "--record", str(record)])
    assert r.exit_code == 2 and "exists; pass --overwrite" in r.output and record.read_bytes() == before
    r = runner.invoke(app, [*args, "--record", str(record), "--overwrite"])
    assert r.exit_code == 0 and json.loads(record.read_text())["precision"] == written["precision"]


def test_cli_record_refuses_an_input_or_a_folder(inputs, weights, tmp_path):
    ref, sam = inputs
    before = sam.read_bytes()
    for target, message in ((sam, "is one of the inputs"), (tmp_path, "is a directory")):
        r = runner.invoke(app, ["evaluate", str(ref), str(sam), "--inception-weights", str(weights), "--record", str(target), "--overwrite"])
        assert r.exit_code == 2 and message in r.output, r.output
    assert sam.read_bytes() == before
