"""`adm evaluate` and `adm ref-batch` end to end on tiny inputs, with seeded random Inception
weights carrying the real names (no downloads), and their one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from tests.eval_helpers import random_inception_state

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def err(result) -> str:
    return getattr(result, "stderr", None) or result.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    weights = root / "inception.pth"
    torch.save(random_inception_state(), weights)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8)
    sam = (ref[:8].astype(np.int64) + rng.integers(-30, 30, (8, 24, 24, 3))).clip(0, 255).astype(np.uint8)
    np.savez(root / "ref.npz", ref)
    np.savez(root / "sam.npz", sam, np.arange(8))
    return root, weights


def test_evaluate_prints_the_evaluators_five_lines(setup):
    root, weights = setup
    result = run("evaluate", root / "ref.npz", root / "sam.npz", "--inception-weights", weights, "-b", 4)
    assert result.exit_code == 0, err(result)
    lines = result.stdout.strip().splitlines()
    names = ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert [ln.split(":")[0] for ln in lines] == names
    for ln in lines:
        assert re.fullmatch(r"[A-Za-z ]+: -?[0-9.e+-]+", ln), ln
    values = dict(ln.split(": ") for ln in lines)
    assert float(values["FID"]) > 0 and 1 <= float(values["Inception Score"]) <= 1008
    assert "not a known FID Inception file" in err(result)


def test_evaluate_json_subset_and_env_weights(setup):
    root, weights = setup
    result = run("evaluate", root / "ref.npz", root / "sam.npz", "--metrics", "precision,recall,kid", "--json", "-q",
                 env={"ADM_INCEPTION_WEIGHTS": str(weights)})
    assert result.exit_code == 0, err(result)
    record = json.loads(result.stdout)
    assert set(record) >= {"precision", "recall", "kid", "n_ref", "n_samples", "features"}
    assert "fid" not in record and record["n_ref"] == 10 and record["n_samples"] == 8
    assert 0 <= record["precision"] <= 1


def test_evaluate_without_weights_offline_says_how(setup, tmp_path, monkeypatch):
    root, _ = setup
    import adm_cli.evaluate.weights as W

    def offline(url, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(W, "_torch_download", offline)
    result = run("evaluate", root / "ref.npz", root / "sam.npz", "--cache-dir", tmp_path, env={"ADM_INCEPTION_WEIGHTS": None})
    assert result.exit_code == 2
    message = err(result).strip()
    assert message.count("\n") == 0 and message.startswith("error: could not download the Inception weights")
    assert "--inception-weights" in message and "ADM_INCEPTION_WEIGHTS" in message


def test_evaluate_bad_inputs_exit_2(setup, tmp_path):
    root, weights = setup
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "f.npz", np.zeros((4, 8, 8, 3), np.float32))
    np.savez(tmp_path / "one.npz", np.zeros((1, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "gray.npz", np.zeros((5, 8, 8, 1), np.uint8))
    cases = [
        (tmp_path / "x.npz", "no arr_0"),
        (tmp_path / "f.npz", "dtype float32"),
        (tmp_path / "one.npz", "at least 2"),
        (tmp_path / "gray.npz", "mismatched channel counts"),
        (tmp_path / "missing.npz", "no such file"),
    ]
    for path, pattern in cases:
        result = run("evaluate", root / "ref.npz", path, "--inception-weights", weights, "--metrics", "fid", "--no-cache")
        assert result.exit_code == 2, (path, result.output)
        assert re.search(pattern, err(result)), (pattern, err(result))
        assert "Traceback" not in result.output
    result = run("evaluate", root / "ref.npz", root / "sam.npz", "--inception-weights", weights, "--metrics", "fdi")
    assert result.exit_code == 2 and "unknown metric 'fdi'" in err(result)


def test_ref_batch_then_evaluate_against_it(setup, tmp_path):
    _, weights = setup
    out = tmp_path / "ref.npz"
    result = run("ref-batch", "synthetic:12", "--image-size", 16, "--out", out, "--num", 6, "--inception-weights", weights, "-b", 5)
    assert result.exit_code == 0, err(result)
    assert "statistics of 12 images, 6 images and labels in arr_0" in result.stdout
    with np.load(out) as z:
        assert z["arr_0"].shape == (6, 16, 16, 3) and z["arr_1"].shape == (6,)
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and z["mu_s"].shape == (2023,)
    again = run("ref-batch", "synthetic:12", "--image-size", 16, "--out", out, "--inception-weights", weights)
    assert again.exit_code == 2 and "--overwrite" in err(again)
    # samples = the data set itself: precision/recall of a set against its own reference subset
    result = run("evaluate", out, out, "--inception-weights", weights, "--metrics", "precision,recall", "--json", "-q")
    assert result.exit_code == 0, err(result)
    record = json.loads(result.stdout)
    assert record["precision"] == 1.0 and record["recall"] == 1.0


def test_domain_features_from_a_classifier(models, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "a.npz", rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", rng.integers(0, 128, (9, 16, 16, 3), dtype=np.uint8))
    result = run("evaluate", tmp_path / "a.npz", tmp_path / "b.npz", "--features", models["classifier"], "--json", "-q")
    assert result.exit_code == 0, err(result)
    record = json.loads(result.stdout)
    assert set(record) >= {"fid", "precision", "recall"} and "inception_score" not in record
    assert record["features"].startswith("classifier-") and record["fid"] > 0
    bad = run("evaluate", tmp_path / "a.npz", tmp_path / "b.npz", "--features", models["classifier"], "--metrics", "sfid")
    assert bad.exit_code == 2 and "need Inception features" in err(bad)
    np.savez(tmp_path / "c.npz", rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8))
    bad = run("evaluate", tmp_path / "a.npz", tmp_path / "c.npz", "--features", models["classifier"])
    assert bad.exit_code == 2 and "takes 16x16" in err(bad)


def test_ref_batch_images_only_needs_no_weights(tmp_path, models, monkeypatch):
    import adm_cli.evaluate.weights as W

    monkeypatch.setattr(W, "resolve_weights", lambda *a, **k: pytest.fail("weights were looked for"))
    out = tmp_path / "imgs.npz"
    result = run("ref-batch", "synthetic:30", "--image-size", 16, "--out", out, "--num", 20, "--no-stats")
    assert result.exit_code == 0, err(result)
    assert "wrote" in result.stdout and "statistics" not in result.stdout
    with np.load(out) as z:
        assert set(z.files) == {"arr_0", "arr_1", "adm_meta"} and z["arr_0"].shape == (20, 16, 16, 3)
    np.savez(tmp_path / "s.npz", np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    result = run("evaluate", out, tmp_path / "s.npz", "--features", models["classifier"], "--json", "-q")
    assert result.exit_code == 0, err(result)
