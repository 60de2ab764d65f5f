"""Density and coverage (Naeem et al. 2020, k = 5): the prdc package's own numbers
(assets/golden/prdc, inputs rebuilt from their seeds), closed-form cases, `evaluate` and the CLI."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.evaluate import EvaluateError, EvaluateOptions, density_coverage, evaluate
from tests.eval_helpers import ToyFeatures, random_inception_state

GOLDEN = Path(__file__).resolve().parent.parent / "assets" / "golden" / "prdc"
RECORD = json.loads((GOLDEN / "golden.json").read_text())
runner = CliRunner()


def _recipes():
    """assets/golden/prdc/make_golden.py (numpy only; prdc is never imported), loaded by path:
    other golden folders have a make_golden.py too, so a plain import would find theirs."""
    spec = importlib.util.spec_from_file_location("prdc_make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(case: dict) -> tuple[np.ndarray, np.ndarray]:
    return _recipes().make_inputs(case["seed"], case["n_real"], case["n_fake"], case["dim"], case["kind"])


@pytest.mark.parametrize("name", sorted(RECORD["cases"]))
def test_equals_prdc_reference_code(name):
    case = RECORD["cases"][name]
    real, fake = _inputs(case)
    # whole blocks, and blocks / tiles that split the sets unevenly: the same decisions
    for kw in ({}, {"block_size": 64, "tile": 24}):
        density, coverage = density_coverage(real, fake, k=case["k"], **kw)
        assert density == pytest.approx(case["density"], rel=1e-12, abs=1e-12), kw
        assert coverage == case["coverage"], kw


def test_golden_cases_cover_the_interesting_regimes():
    cases = RECORD["cases"]
    assert cases["tight"]["density"] > 1 and cases["far"]["density"] == cases["far"]["coverage"] == 0
    assert cases["few_fakes"]["n_fake"] < cases["few_fakes"]["k"]


def test_closed_forms():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((40, 8)).astype(np.float32)
    # identical sets: every real point has a fake at distance 0 < r_i
    assert density_coverage(real, real)[1] == 1.0
    # far apart: no fake in any ball
    assert density_coverage(real, real[:10] + 1e3) == (0.0, 0.0)
    # by hand, k = 1 on a line: r_i = 1 for the points 0..9; a fake at 0.5 lies in the balls of
    # 0 and 1 (density 2/1 > 1) and covers those two (coverage 2/10); one at 9.99 only the ball of 9
    line = np.arange(10, dtype=np.float32)[:, None]
    assert density_coverage(line, np.array([[0.5]], np.float32), k=1) == (2.0, 0.2)
    assert density_coverage(line, np.array([[0.5], [9.99]], np.float32), k=1) == (1.5, 0.3)
    # strict inequality, as prdc: a fake exactly on a ball's boundary is outside it
    assert density_coverage(line, np.array([[-1.0]], np.float32), k=1) == (0.0, 0.0)
    # N = k + 1: r_i is the distance to the farthest other point (radii 10, 9, 8, 7, 6, 10);
    # 9 lies in all six balls (density 6/5), 11 only in that of 10 (which it is 1 from)
    six = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0]], np.float32)
    assert density_coverage(six, np.array([[9.0]], np.float32), k=5) == (pytest.approx(6 / 5), 1.0)
    assert density_coverage(six, np.array([[11.0]], np.float32), k=5) == (pytest.approx(1 / 5), 1 / 6)


def test_bad_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    with pytest.raises(ValueError, match="more than k = 5"):
        density_coverage(x, x)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        density_coverage(x, rng.standard_normal((5, 4)))


def test_evaluate_uses_the_pool_features(tmp_path):
    rng = np.random.default_rng(3)
    ref, sam = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), rng.integers(40, 200, (12, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", ref)
    np.savez(tmp_path / "sam.npz", sam)
    net = ToyFeatures()
    options = EvaluateOptions(metrics=("coverage", "fid", "density"))
    result = evaluate(tmp_path / "ref.npz", tmp_path / "sam.npz", net, options=options, cache=False)
    assert list(result.metrics) == ["fid", "density", "coverage"]  # the evaluator's order, not the asked one
    expected = density_coverage(net(ref)["pool"], net(sam)["pool"])
    assert (result.metrics["density"], result.metrics["coverage"]) == expected
    assert result.lines()[1:] == [f"Density: {expected[0]!r}", f"Coverage: {expected[1]!r}"]
    assert {"density", "coverage", "fid"} <= set(result.as_json())
    np.savez(tmp_path / "five.npz", ref[:5])
    with pytest.raises(EvaluateError, match="density/coverage need more than k = 5 reference images"):
        evaluate(tmp_path / "five.npz", tmp_path / "sam.npz", net, options=EvaluateOptions(metrics=("density",)), cache=False)
    # five SAMPLES are fine (only the reference needs radii)
    np.savez(tmp_path / "sam5.npz", sam[:5])
    evaluate(tmp_path / "ref.npz", tmp_path / "sam5.npz", net, options=EvaluateOptions(metrics=("density",)), cache=False)


# ---- CLI


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def err(result) -> str:
    return getattr(result, "stderr", None) or result.output


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dc")
    weights = root / "inception.pth"
    torch.save(random_inception_state(), weights)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (7, 24, 24, 3), dtype=np.uint8)  # few images: Inception on CPUs is slow
    sam = (ref[:4].astype(np.int64) + rng.integers(-30, 30, (4, 24, 24, 3))).clip(0, 255).astype(np.uint8)
    np.savez(root / "ref.npz", ref)
    np.savez(root / "sam.npz", sam)
    np.savez(root / "five.npz", ref[:5])
    return root, weights


def test_cli_density_coverage_lines_and_json(images):
    root, weights = images
    result = run("evaluate", root / "ref.npz", root / "sam.npz", "--inception-weights", weights, "--metrics", "density,coverage", "-b", 5)
    assert result.exit_code == 0, err(result)
    lines = result.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["Density", "Coverage"]
    for ln in lines:
        assert re.fullmatch(r"[A-Za-z ]+: [0-9.e+-]+", ln), ln
    values = {k: float(v) for k, v in (ln.split(": ") for ln in lines)}
    assert values["Density"] >= 0 and 0 <= values["Coverage"] <= 1

    # combined with the others (not FID here: a 2048² sqrtm takes most of a minute on small CPUs;
    # test_evaluate_uses_the_pool_features combines it), features from the cache; the same numbers
    result = run("evaluate", root / "ref.npz", root / "sam.npz", "--inception-weights", weights,
                 "--metrics", "coverage,precision,recall,density", "--json", "-q")
    assert result.exit_code == 0, err(result)
    record = json.loads(result.stdout)
    assert list(record)[2:6] == ["precision", "recall", "density", "coverage"]
    assert (record["density"], record["coverage"]) == (values["Density"], values["Coverage"])

    # a set against itself covers every reference point
    result = run("evaluate", root / "ref.npz", root / "ref.npz", "--inception-weights", weights, "--metrics", "coverage", "--json", "-q")
    assert result.exit_code == 0, err(result)
    assert json.loads(result.stdout)["coverage"] == 1.0


def test_cli_too_few_reference_images(images, monkeypatch):
    root, weights = images
    import adm_cli.evaluate.weights as W

    monkeypatch.setattr(W, "resolve_weights", lambda *a, **k: pytest.fail("weights were looked for"))
    result = run("evaluate", root / "five.npz", root / "sam.npz", "--inception-weights", weights, "--metrics", "density")
    assert result.exit_code == 2
    message = err(result).strip()
    assert message.count("\n") == 0 and message.startswith("error:") and "more than k = 5" in message
    assert "Traceback" not in result.output


def test_cli_with_classifier_features(models, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "a.npz", rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", rng.integers(0, 128, (9, 16, 16, 3), dtype=np.uint8))
    result = run("evaluate", tmp_path / "a.npz", tmp_path / "b.npz", "--features", models["classifier"],
                 "--metrics", "precision,recall,density,coverage", "--json", "-q")
    assert result.exit_code == 0, err(result)
    record = json.loads(result.stdout)
    assert record["features"].startswith("classifier-")
    assert record["density"] >= 0 and 0 <= record["coverage"] <= 1
