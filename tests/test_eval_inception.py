"""The FID Inception network, its TF1 resize and its weights (adm_cli.evaluate.inception, .resize, .weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.evaluate.inception import SPATIAL_DIM, FIDInception
from adm_cli.evaluate.resize import tf1_resize_bilinear
from adm_cli.evaluate import weights as W
from tests.eval_helpers import nvidia_state, random_inception_state, write_torchscript

DATA = Path(__file__).parent / "data"

# ---- resize: an independent NumPy transcription of TF's legacy bilinear kernel


def _np_tf1_resize(img: np.ndarray, h_out: int, w_out: int) -> np.ndarray:
    """resize_bilinear_op.cc, align_corners=False, half_pixel_centers=False, one (H, W) float32 plane."""
    h_in, w_in = img.shape
    sy, sx = np.float32(h_in / h_out), np.float32(w_in / w_out)
    out = np.zeros((h_out, w_out), np.float32)
    for y in range(h_out):
        in_y = np.float32(y) * sy
        y0 = int(np.floor(in_y))
        y1 = min(y0 + 1, h_in - 1)
        ly = np.float32(in_y - np.float32(y0))
        for x in range(w_out):
            in_x = np.float32(x) * sx
            x0 = int(np.floor(in_x))
            x1 = min(x0 + 1, w_in - 1)
            lx = np.float32(in_x - np.float32(x0))
            tl, tr, bl, br = img[y0, x0], img[y0, x1], img[y1, x0], img[y1, x1]
            top = np.float32(tl + np.float32((tr - tl) * lx))
            bottom = np.float32(bl + np.float32((br - bl) * lx))
            out[y, x] = np.float32(top + np.float32((bottom - top) * ly))
    return out


@pytest.mark.parametrize("size_in,size_out", [((7, 5), (13, 11)), ((32, 32), (45, 45)), ((64, 48), (29, 37)), ((5, 9), (5, 9))])
def test_resize_matches_the_tf1_formula(size_in, size_out):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size_in).astype(np.float32)
    ours = tf1_resize_bilinear(torch.from_numpy(img)[None, None], size_out)[0, 0].numpy()
    np.testing.assert_array_equal(ours, _np_tf1_resize(img, *size_out))


def test_resize_hand_case_and_identity():
    x = torch.tensor([[[[10.0, 20.0]]]])  # (1, 1, 1, 2)
    out = tf1_resize_bilinear(x, (1, 4))[0, 0, 0]
    assert out.tolist() == [10.0, 15.0, 20.0, 20.0]  # src = 0, .5, 1, 1.5 → last clamps to the edge
    big = torch.rand(1, 3, 299, 299)
    assert tf1_resize_bilinear(big, (299, 299)) is big


def test_resize_differs_from_half_pixel_interpolate():
    x = torch.rand(1, 1, 8, 8) * 255
    ours = tf1_resize_bilinear(x, (299, 299))
    torch_half = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (ours - torch_half).abs().max() > 1.0  # the misalignment the evaluator.md warns about


# ---- network


@pytest.fixture(scope="module")
def net() -> FIDInception:
    n = FIDInception()
    n.load_state_dict(random_inception_state(), strict=False)
    return n


def test_state_dict_keys_are_the_standard_files(net):
    expected = {}
    for line in (DATA / "fid_inception_keys.txt").read_text().splitlines():
        k, shape = line.split()
        expected[k] = tuple(int(s) for s in shape.split("x"))
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours == expected
    assert len(ours) == 472


def test_output_shapes_and_no_grad(net):
    images = torch.randint(0, 256, (2, 40, 30, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = net(images)
    assert out["pool"].shape == (2, 2048) and out["spatial"].shape == (2, SPATIAL_DIM)
    assert net.logits_unbiased(out["pool"]).shape == (2, 1008)
    assert out["pool"].dtype == torch.float32 and torch.isfinite(out["pool"]).all()
    assert out["pool"].std() > 1e-3  # random weights still separate images


def test_logits_have_no_bias(net):
    pool = torch.randn(3, 2048)
    torch.testing.assert_close(net.logits_unbiased(pool), pool @ net.fc.weight.T)
    assert net.fc.bias.abs().sum() > 0


def test_spatial_is_mixed_6d_1x1_branch_in_nhwc_order(net):
    captured = {}
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.update(b=o))
    images = torch.randint(0, 256, (2, 299, 299, 3), dtype=torch.uint8)
    with torch.no_grad():
        spatial = net(images)["spatial"]
    hook.remove()
    branch = captured["b"]  # (N, 192, 17, 17), after the ReLU
    assert branch.shape == (2, 192, 17, 17) and (branch >= 0).all()
    for h, w, c in [(0, 0, 0), (0, 1, 0), (1, 0, 3), (16, 16, 6), (5, 11, 2)]:
        assert spatial[1, (h * 17 + w) * 7 + c] == branch[1, c, h, w]


def test_features_do_not_depend_on_batch_size(net):
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        whole = net(images)["pool"]
        parts = torch.cat([net(images[:2])["pool"], net(images[2:])["pool"]])
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-6)


def test_folded_batchnorm_is_the_same_network(net):
    """What `InceptionFeatures` runs: BN folded into the convs (and channels-last on the CPU) gives
    the plain network's features to a few 1e-6, inside the TF goldens' 2e-5; ``net`` is untouched."""
    from adm_cli.evaluate.inception import fold_batchnorm
    from adm_cli.evaluate.nets import InceptionFeatures

    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    images = torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain, fast = net(images), folded(images)
    via_features = InceptionFeatures(net, "w")(images.numpy())
    for kind in ("pool", "spatial"):
        torch.testing.assert_close(fast[kind], plain[kind], rtol=0, atol=2e-5)
        torch.testing.assert_close(torch.from_numpy(via_features[kind]), plain[kind], rtol=0, atol=2e-5)


def test_preprocess_is_x_minus_128_over_128(net):
    x = torch.full((1, 299, 299, 3), 255, dtype=torch.uint8)
    assert net.preprocess(x).max().item() == (255 - 128) / 128
    assert net.preprocess(torch.zeros_like(x)).min().item() == -1.0


# ---- weights files


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "pt_inception-random.pth"
    torch.save(random_inception_state(), path)
    return path


def test_load_plain_state_dict_with_weights_only(weights_file, net):
    loaded = W.load_inception(weights_file)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_nvidia_torchscript(tmp_path, weights_file):
    state = random_inception_state()
    for k in state:
        if k.endswith("bn.weight"):
            state[k] = torch.ones_like(state[k])  # NVIDIA's layers have no gamma
    ts = write_torchscript(tmp_path / "inception-2015-12-05.pt", nvidia_state())
    net_ts = W.load_inception(ts)
    net_pt = FIDInception()
    net_pt.load_state_dict(state, strict=False)
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(net_ts(images)["pool"], net_pt(images)["pool"], rtol=0, atol=0)


def test_wrong_or_corrupt_weights(tmp_path, weights_file):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(W.InceptionWeightsError, match="not a readable weights file"):
        W.load_inception(bad)
    state = random_inception_state()
    del state["Mixed_6d.branch1x1.conv.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(W.InceptionWeightsError, match="missing Mixed_6d.branch1x1.conv.weight"):
        W.load_inception(tmp_path / "missing.pth")
    state = random_inception_state()
    state["fc.weight"] = state["fc.weight"][:1000]
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(W.InceptionWeightsError, match="fc.weight has shape"):
        W.load_inception(tmp_path / "shape.pth")
    with pytest.raises(W.InceptionWeightsError, match="not found"):
        W.resolve_weights(tmp_path / "nope.pth")


def test_explicit_path_never_downloads(weights_file, tmp_path):
    def no_network(url, dst):
        raise AssertionError("downloaded")

    found = W.resolve_weights(weights_file, cache_dir=tmp_path, downloader=no_network)
    assert found.path == weights_file and not found.standard
    assert found.sha256 == W.file_sha256(weights_file)


def test_download_is_verified_and_renamed_atomically(weights_file, tmp_path, monkeypatch):
    digest = W.file_sha256(weights_file)
    monkeypatch.setattr(W, "STANDARD_SHA256", digest)
    urls = []

    def fake(url, dst):
        urls.append(url)
        Path(dst).write_bytes(weights_file.read_bytes())

    found = W.resolve_weights(cache_dir=tmp_path / "cache", downloader=fake)
    assert found.path == tmp_path / "cache" / W.STANDARD_NAME and found.standard
    assert urls == [W.URLS[0]]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [W.STANDARD_NAME]
    # second time: from the cache, no download
    again = W.resolve_weights(cache_dir=tmp_path / "cache", downloader=lambda u, d: pytest.fail("downloaded twice"))
    assert again.path == found.path


def test_download_with_wrong_hash_leaves_nothing(tmp_path):
    def fake(url, dst):
        Path(dst).write_bytes(b"tampered")

    with pytest.raises(W.InceptionWeightsError, match="does not match"):
        W.resolve_weights(cache_dir=tmp_path, downloader=fake)
    assert list(tmp_path.iterdir()) == []


def test_offline_message_says_how_to_provide_weights(tmp_path):
    def offline(url, dst):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(W.InceptionWeightsError) as e:
        W.resolve_weights(cache_dir=tmp_path, downloader=offline)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("--inception-weights", "ADM_INCEPTION_WEIGHTS", W.URLS[0], str(tmp_path / W.STANDARD_NAME)):
        assert part in msg
    with pytest.raises(W.InceptionWeightsError, match="not in"):
        W.resolve_weights(cache_dir=tmp_path, download=False)


def test_cache_finds_other_tools_copies(weights_file, tmp_path, monkeypatch):
    monkeypatch.setattr(W, "STANDARD_SHA256", W.file_sha256(weights_file))
    (tmp_path / "weights-inception-2015-12-05-6726825d.pth").write_bytes(weights_file.read_bytes())  # torch-fidelity's name
    found = W.resolve_weights(cache_dir=tmp_path, downloader=lambda u, d: pytest.fail("downloaded"))
    assert found.path.name == "weights-inception-2015-12-05-6726825d.pth"


def test_clean_resize_is_clean_fids_and_differs_from_tf1(net):
    from cleanfid.resize import make_resizer

    from adm_cli.evaluate.nets import InceptionFeatures, clean_resize

    images = np.random.default_rng(3).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    resized = clean_resize(images)
    assert resized.shape == (2, 299, 299, 3) and resized.dtype == np.float32
    np.testing.assert_array_equal(resized[1], make_resizer("PIL", False, "bicubic", (299, 299))(images[1]))
    clean = InceptionFeatures(net, "w", resize="clean")(images)["pool"]
    tf1 = InceptionFeatures(net, "w", resize="tf1")(images)["pool"]
    assert clean.shape == tf1.shape and not np.allclose(clean, tf1, atol=1e-3)
    assert InceptionFeatures(net, "w", resize="clean").id != InceptionFeatures(net, "w").id  # separate caches
