"""adm_cli.evaluate.evaluate / sources / features / ref_batch with a fast stand-in network:
streaming, caching, resume, precomputed statistics, reference batches and bad input."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from adm_cli.data.sample_reader import iter_sample_batches
from adm_cli.evaluate import EvaluateError, EvaluateOptions, evaluate
from adm_cli.evaluate.features import FeatureCache, extract_features, feature_cache_dir
from adm_cli.evaluate.fid import fid_statistics, frechet_distance, inception_score
from adm_cli.evaluate.precision_recall import precision_recall
from adm_cli.evaluate.sources import SampleSource
from tests.eval_helpers import ToyFeatures


def _images(seed: int, n: int, size: int = 8, c: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


@pytest.fixture
def pair(tmp_path):
    ref, sam = _images(0, 30), _images(1, 25) // 2 + 60
    np.savez(tmp_path / "ref.npz", ref)
    np.savez(tmp_path / "sam.npz", sam, np.arange(25))
    return tmp_path / "ref.npz", tmp_path / "sam.npz", ref, sam


# ---- streaming reader


@pytest.mark.parametrize("kind", ["stored", "deflated", "h5", "folder"])
def test_streaming_reader_equals_np_load_from_any_start(tmp_path, kind):
    images = _images(2, 23)
    if kind == "stored":
        path = tmp_path / "a.npz"
        np.savez(path, images)
    elif kind == "deflated":
        path = tmp_path / "a.npz"
        np.savez_compressed(path, images)
    elif kind == "h5":
        path = tmp_path / "a.h5"
        with h5py.File(path, "w") as f:
            f["images"] = images
    else:
        path = tmp_path / "imgs"
        path.mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(path / f"{i:03d}.png")
    for start in (0, 5, 22, 23):
        got = [b for b, _ in iter_sample_batches(path, 4, start=start)]
        assert all(len(b) <= 4 for b in got)
        joined = np.concatenate(got) if got else np.zeros((0, 8, 8, 3), np.uint8)
        np.testing.assert_array_equal(joined, images[start:])


def test_streaming_reader_never_loads_arr_0_whole(tmp_path, monkeypatch):
    np.savez(tmp_path / "a.npz", _images(3, 10))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load used"))
    assert sum(len(b) for b, _ in iter_sample_batches(tmp_path / "a.npz", 3)) == 10


# ---- metrics through evaluate()


def test_evaluate_equals_the_metric_functions(pair):
    ref_path, sam_path, ref, sam = pair
    net = ToyFeatures()
    opts = EvaluateOptions(metrics=("is", "fid", "sfid", "precision", "recall"), batch_size=7)
    result = evaluate(ref_path, sam_path, net, options=opts, cache=False)
    fr, fs = net(ref), net(sam)
    assert list(result.metrics) == ["is", "fid", "sfid", "precision", "recall"]
    assert result.metrics["is"] == inception_score(net.class_probabilities(fs["pool"]))
    assert result.metrics["fid"] == fid_statistics(fs["pool"]).frechet_distance(fid_statistics(fr["pool"]))
    assert result.metrics["sfid"] == fid_statistics(fs["spatial"]).frechet_distance(fid_statistics(fr["spatial"]))
    assert (result.metrics["precision"], result.metrics["recall"]) == precision_recall(fr["pool"], fs["pool"])
    assert result.lines()[1] == f"FID: {result.metrics['fid']!r}"
    assert result.lines()[0].startswith("Inception Score: ")


def test_batch_size_does_not_change_results(pair):
    ref_path, sam_path, *_ = pair
    a = evaluate(ref_path, sam_path, ToyFeatures(), options=EvaluateOptions(batch_size=1), cache=False)
    b = evaluate(ref_path, sam_path, ToyFeatures(), options=EvaluateOptions(batch_size=64), cache=False)
    assert a.metrics == pytest.approx(b.metrics, rel=1e-6)


def test_precomputed_statistics_are_used_as_given(tmp_path, pair):
    _, sam_path, ref, _ = pair
    rng = np.random.default_rng(4)
    mu, mu_s = rng.standard_normal(6), rng.standard_normal(5)
    sigma, sigma_s = np.eye(6) * 2.0, np.eye(5) * 0.5
    np.savez(tmp_path / "stats_ref.npz", ref, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    net = ToyFeatures()
    result = evaluate(tmp_path / "stats_ref.npz", sam_path, net, options=EvaluateOptions(metrics=("fid", "sfid")), cache=False)
    assert net.seen == 25  # the reference images were not needed for FID/sFID alone
    fs = net(np.load(sam_path)["arr_0"])
    s = fid_statistics(fs["pool"])
    assert result.metrics["fid"] == frechet_distance(s.mu, s.sigma, mu, sigma)
    ss = fid_statistics(fs["spatial"])
    assert result.metrics["sfid"] == frechet_distance(ss.mu, ss.sigma, mu_s, sigma_s)
    assert result.precomputed == {"ref": ["pool", "spatial"]}


def test_precomputed_statistics_of_the_wrong_size(tmp_path, pair):
    _, sam_path, ref, _ = pair
    np.savez(tmp_path / "bad.npz", ref, mu=np.zeros(3), sigma=np.eye(3), mu_s=np.zeros(5), sigma_s=np.eye(5))
    with pytest.raises(EvaluateError, match=r"mu/sigma have shapes \(3,\)"):
        evaluate(tmp_path / "bad.npz", sam_path, ToyFeatures(), cache=False)


# ---- cache and resume


def test_second_evaluation_reads_the_cache(pair):
    ref_path, sam_path, *_ = pair
    net = ToyFeatures()
    first = evaluate(ref_path, sam_path, net)
    assert net.seen == 55
    second = evaluate(ref_path, sam_path, net)
    assert net.seen == 55 and second.metrics == first.metrics
    assert (ref_path.parent / ".adm-cache").is_dir()


def test_changed_file_is_not_served_from_the_cache(pair):
    ref_path, sam_path, ref, sam = pair
    net = ToyFeatures()
    evaluate(ref_path, sam_path, net)
    np.savez(sam_path, sam[::-1].copy())
    evaluate(ref_path, sam_path, net)
    assert net.seen == 55 + 25


class _Killed(RuntimeError):
    pass


def test_killed_extraction_resumes_without_redoing_chunks(tmp_path):
    images = _images(5, 50)
    np.savez(tmp_path / "s.npz", images)
    src = SampleSource(tmp_path / "s.npz")
    net = ToyFeatures()
    cache = FeatureCache(feature_cache_dir(src, net), n=50, net_id=net.id, source=src.name)

    class Dying(ToyFeatures):
        def __call__(self, x):
            if self.seen >= 30:
                raise _Killed()
            return super().__call__(x)

    dying = Dying()
    with pytest.raises(_Killed):
        extract_features(src, dying, batch_size=5, cache=cache, chunk=10)
    assert cache.done() == 30
    # a half-written chunk (killed during the write) is ignored
    (cache.root / "feat-000000000030.tmp.npz").write_bytes(b"junk")
    resumed = ToyFeatures()
    feats = extract_features(src, resumed, batch_size=5, cache=cache, chunk=10)
    assert resumed.seen == 20
    np.testing.assert_allclose(feats["pool"], ToyFeatures()(images)["pool"], rtol=1e-6)


def test_read_only_location_falls_back(tmp_path, pair, monkeypatch):
    ref_path, sam_path, *_ = pair
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith(".adm-cache") else real_access(p, m))
    src = SampleSource(sam_path)
    assert feature_cache_dir(src, ToyFeatures(), fallback_dir=tmp_path / "fb").parent == tmp_path / "fb"


# ---- bad input


def test_bad_inputs_are_one_line_errors(tmp_path, pair):
    from adm_cli.data.sample_format import SampleFileError

    ref_path, sam_path, ref, _ = pair
    net = ToyFeatures()
    cases = {}
    np.savez(tmp_path / "noarr.npz", images=ref)
    cases["noarr.npz"] = "no arr_0"
    np.savez(tmp_path / "float.npz", ref.astype(np.float32))
    cases["float.npz"] = "dtype float32"
    np.savez(tmp_path / "one.npz", ref[:1])
    cases["one.npz"] = "at least 2"
    np.savez(tmp_path / "gray.npz", ref[..., :1])
    cases["gray.npz"] = "mismatched channel counts"
    data = (tmp_path / "ref.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    cases["trunc.npz"] = "corrupt or truncated|not a readable npz"
    np.savez(tmp_path / "nchw.npz", ref.transpose(0, 3, 1, 2).copy())
    cases["nchw.npz"] = "NCHW"
    for name, pattern in cases.items():
        with pytest.raises((EvaluateError, SampleFileError), match=pattern) as e:
            evaluate(ref_path, tmp_path / name, net, cache=False)
        assert "\n" not in str(e.value)
    with pytest.raises(EvaluateError, match="precision/recall need more than k = 3"):
        np.savez(tmp_path / "three.npz", ref[:3])
        evaluate(ref_path, tmp_path / "three.npz", net, cache=False)
    with pytest.raises(EvaluateError, match="unknown metric 'fdi'"):
        EvaluateOptions(metrics=("fdi",))


def test_truncated_stored_npz_is_caught_while_streaming(tmp_path, pair):
    from adm_cli.data.sample_format import SampleFileError

    ref_path, *_ = pair
    np.savez(tmp_path / "t.npz", _images(6, 40))
    raw = (tmp_path / "t.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "t.npz") as zf:
        info = zf.getinfo("arr_0.npy")
    # cut inside arr_0's data but keep a plausible file (central directory lost)
    (tmp_path / "t.npz").write_bytes(raw[: info.header_offset + 2000])
    with pytest.raises(SampleFileError):
        evaluate(ref_path, tmp_path / "t.npz", ToyFeatures(), cache=False)


# ---- reference batches


def test_reference_batch_layout_and_statistics(tmp_path):
    from adm_cli.data.datasets import open_dataset
    from adm_cli.evaluate.ref_batch import build_reference_batch

    images = _images(7, 40)
    labels = np.arange(40) % 4
    np.savez(tmp_path / "data.npz", images, labels)
    data = open_dataset(tmp_path / "data.npz")
    net = ToyFeatures()
    out = tmp_path / "ref.npz"
    info = build_reference_batch(data, out, net, identity="t", num_images=16, seed=3, batch_size=6)
    assert info.n_images == 40 and info.n_stored == 16 and info.labels
    with np.load(out) as z:
        assert set(z.files) == {"arr_0", "arr_1", "mu", "sigma", "mu_s", "sigma_s", "adm_meta"}
        idx = np.sort(np.random.default_rng(3).choice(40, 16, replace=False))
        np.testing.assert_array_equal(z["arr_0"], images[idx])
        np.testing.assert_array_equal(z["arr_1"], labels[idx])
        feats = ToyFeatures()(images)
        np.testing.assert_allclose(z["sigma"], np.cov(feats["pool"].astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(z["mu_s"], feats["spatial"].astype(np.float64).mean(0), rtol=1e-9)
    assert not (tmp_path / "ref.npz.partial").exists()
    with pytest.raises(EvaluateError, match="exists"):
        build_reference_batch(data, out, net, identity="t")
    # the reference batch against its own data: FID from the stored statistics is ~0
    np.savez(tmp_path / "all.npz", images)
    result = evaluate(out, tmp_path / "all.npz", ToyFeatures(), options=EvaluateOptions(metrics=("fid", "sfid")), cache=False)
    assert result.metrics["fid"] == pytest.approx(0.0, abs=1e-6)


def test_reference_batch_resumes_after_a_kill(tmp_path):
    from adm_cli.data.datasets import open_dataset
    from adm_cli.evaluate.ref_batch import build_reference_batch

    np.savez(tmp_path / "data.npz", _images(8, 3000))
    data = open_dataset(tmp_path / "data.npz")

    class Dying(ToyFeatures):
        def __call__(self, x):
            if self.seen >= 2048:
                raise _Killed()
            return super().__call__(x)

    with pytest.raises(_Killed):
        build_reference_batch(data, tmp_path / "ref.npz", Dying(), identity="d", batch_size=256)
    assert not (tmp_path / "ref.npz").exists() and (tmp_path / "ref.npz.partial").is_dir()
    resumed = ToyFeatures()
    build_reference_batch(data, tmp_path / "ref.npz", resumed, identity="d", batch_size=256)
    assert resumed.seen == 3000 - 2048  # the two finished 1,024-image chunks were kept
    with pytest.raises(EvaluateError, match="exists"):
        build_reference_batch(data, tmp_path / "ref.npz", resumed, identity="d")
    with np.load(tmp_path / "ref.npz") as z:
        full = ToyFeatures()(_images(8, 3000))
        np.testing.assert_allclose(z["mu"], full["pool"].astype(np.float64).mean(0), rtol=1e-6)
