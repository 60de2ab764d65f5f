"""FID, IS and precision/recall (adm_cli.evaluate.fid, .precision_recall): closed forms,
the evaluator's edge cases, and an independent NumPy version of its distance block."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import linalg

from adm_cli.evaluate.fid import fid_statistics, fid_statistics_streamed, frechet_distance, inception_score
from adm_cli.evaluate.precision_recall import manifold_radii, pairwise_sq_distances, precision_recall

# ---- FID


def test_fid_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((200, 16)).astype(np.float32)
    s = fid_statistics(acts)
    assert abs(s.frechet_distance(s)) < 1e-8


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    a, b = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6))
    sigma = x.T @ x / 50
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8, abs=1e-9)


def test_fid_matches_direct_scipy_formula():
    rng = np.random.default_rng(3)
    s1 = fid_statistics(rng.standard_normal((300, 10)).astype(np.float32))
    s2 = fid_statistics((rng.standard_normal((300, 10)) * 1.3 + 0.2).astype(np.float32))
    covmean = linalg.sqrtm(s1.sigma @ s2.sigma).real
    d = s1.mu - s2.mu
    expected = d @ d + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * np.trace(covmean)
    assert s1.frechet_distance(s2) == pytest.approx(expected, rel=1e-10)


def test_fid_dtypes_follow_the_evaluator():
    acts = np.random.default_rng(4).standard_normal((20, 5)).astype(np.float32)
    s = fid_statistics(acts)
    assert s.mu.dtype == np.float32 and s.sigma.dtype == np.float64
    np.testing.assert_array_equal(s.sigma, np.cov(acts, rowvar=False))


def test_fid_singular_product_takes_the_eps_path(monkeypatch):
    import adm_cli.evaluate.fid as fid

    calls = []
    real = fid.sqrtm

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.inf) if len(calls) == 1 else real(a)

    monkeypatch.setattr(fid, "sqrtm", flaky)
    sigma = np.diag([1.0, 0.0])
    with pytest.warns(UserWarning, match="singular product"):
        d = fid.frechet_distance(np.zeros(2), sigma, np.ones(2), sigma, eps=1e-6)
    np.testing.assert_allclose(calls[1], (sigma + 1e-6 * np.eye(2)) @ (sigma + 1e-6 * np.eye(2)))
    assert d == pytest.approx(2.0, abs=1e-5)


def test_fid_complex_sqrtm(monkeypatch):
    import adm_cli.evaluate.fid as fid

    monkeypatch.setattr(fid, "sqrtm", lambda a: np.eye(2) + 1e-6j)
    assert fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) == pytest.approx(0.0)
    monkeypatch.setattr(fid, "sqrtm", lambda a: np.eye(2) + 1e-2j)
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_fid_shape_mismatch():
    with pytest.raises(ValueError, match="different lengths"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_streamed_statistics_equal_np_cov():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((257, 12)) * 3 + 5).astype(np.float32)
    chunks = lambda: (x[i : i + 50] for i in range(0, len(x), 50))  # noqa: E731
    s = fid_statistics_streamed(chunks)
    np.testing.assert_allclose(s.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.mu, x.astype(np.float64).mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        fid_statistics_streamed(lambda: iter([x[:1]]))


# ---- Inception Score


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def test_is_of_uniform_predictions_is_one():
    assert inception_score(np.full((100, 10), 0.1, np.float32)) == pytest.approx(1.0, abs=1e-6)


def test_is_of_confident_predictions_over_k_classes_is_k():
    k = 7
    logits = 30.0 * np.eye(k)[np.arange(700) % k]  # no exact zeros after softmax
    assert inception_score(_softmax(logits)) == pytest.approx(k, rel=1e-4)


def test_is_exact_zero_probability_gives_nan_like_the_evaluator():
    p = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    assert np.isnan(inception_score(p))


def test_is_consecutive_splits_with_a_short_last_one():
    rng = np.random.default_rng(6)
    p = _softmax(rng.standard_normal((12, 5)) * 3)

    def one(part):
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        return np.exp(np.mean(np.sum(kl, 1)))

    expected = np.mean([one(p[0:5]), one(p[5:10]), one(p[10:12])])
    assert inception_score(p, split_size=5) == pytest.approx(float(expected), rel=1e-6)
    assert inception_score(p, split_size=5) != pytest.approx(inception_score(p[::-1].copy(), split_size=5), rel=1e-6)


# ---- precision / recall: an independent NumPy version of the evaluator's algorithm


def _np_distances(u, v):
    """guided-diffusion's DistanceBlock in NumPy: float16 values, float32 sums, float16 results."""
    f16 = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore"):
        h, g = f16(u), f16(v)
        nu, nv = f16(f16(h * h).sum(1)), f16(f16(g * g).sum(1))
        d = np.maximum(f16(f16(nu[:, None] - 2 * f16(h @ g.T)) + nv[None, :]), 0)
    if not np.isfinite(d).all():  # the float32 recomputation uses the unrounded features
        d = np.maximum((u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None, :], 0)
    return d


def _np_pr(ref, sam, k=3):
    r_ref = np.partition(_np_distances(ref, ref), k, axis=1)[:, k]
    r_sam = np.partition(_np_distances(sam, sam), k, axis=1)[:, k]
    d = _np_distances(ref, sam)
    return float(np.mean(np.any(d <= r_ref[:, None], 0))), float(np.mean(np.any(d <= r_sam[None, :], 1))), r_ref, r_sam


def _quantised(rng, n, d=16, scale=2):
    # halves below 4 in 16 dimensions: every square, norm, product, sum and intermediate of the
    # distance is a multiple of 1/4 below 512, exact in float16 — so summation order and the
    # float16-vs-float32 accumulation of the norms cannot matter: results must agree bit for bit.
    return (rng.integers(0, 4 * scale, (n, d)) / scale).astype(np.float32)


@pytest.mark.parametrize("block,tile", [(10000, 2048), (16, 16), (10, 3)])
def test_pr_equals_numpy_evaluator_and_block_size_does_not_matter(block, tile):
    rng = np.random.default_rng(7)
    ref, sam = _quantised(rng, 60), _quantised(rng, 45) + 0.5
    p, r, r_ref, r_sam = _np_pr(ref, sam)
    np.testing.assert_array_equal(manifold_radii(ref, block_size=block, tile=tile), r_ref)
    np.testing.assert_array_equal(manifold_radii(sam, block_size=block, tile=tile), r_sam)
    assert precision_recall(ref, sam, block_size=block, tile=tile) == (p, r)
    assert 0 < p < 1 and 0 < r < 1


def test_pr_hand_made_sets_with_a_tie_at_the_radius():
    # reference: 5 points on a line at 0, 1, 2, 3, 4 (1-d); k = 3
    ref = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]], np.float32)
    r = manifold_radii(ref)
    np.testing.assert_array_equal(r, [9.0, 4.0, 4.0, 4.0, 9.0])  # 4th smallest of the row, self included
    # samples: one exactly on the boundary of point 0's ball (d² = 9 = r²), one just outside all
    sam = np.array([[-3.0], [-3.0], [-3.0], [-3.0], [-5.5]], np.float32)
    precision, recall = precision_recall(ref, sam)
    assert precision == pytest.approx(4 / 5)  # `<=`: the four at -3 count, -5.5 does not
    # recall: the samples' own radii (duplicates → radius of -3 is 0, i.e. the 4th smallest of
    # {0, 0, 0, 0, 6.25}); ref 0 is at d² = 9 from -3: outside. -5.5 has radius 6.25: nothing within.
    assert recall == 0.0


def test_pr_orientation():
    rng = np.random.default_rng(8)
    ref = rng.standard_normal((80, 4)).astype(np.float32)
    sam = (0.2 * rng.standard_normal((80, 4))).astype(np.float32)  # a tight cluster inside ref
    p, r = precision_recall(ref, sam)
    assert p > 0.9 and r < 0.6  # samples sit in the data manifold, but cover little of it


def test_pr_duplicates_have_zero_radius():
    x = np.repeat(np.array([[1.0, 2.0], [5.0, 5.0]], np.float32), 4, axis=0)
    np.testing.assert_array_equal(manifold_radii(x), np.zeros(8))


def test_fp16_overflow_falls_back_to_float32():
    rng = np.random.default_rng(9)
    big = (rng.standard_normal((20, 64)) * 1e3).astype(np.float32)  # |u|² ~ 6e7 > float16 max
    d = pairwise_sq_distances(big, big)
    exact = np.maximum((big * big).sum(1)[:, None] - 2 * big @ big.T + (big * big).sum(1)[None, :], 0)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, exact, rtol=1e-4, atol=1e-3 * exact.max())
    # and the radii take the same path
    np.testing.assert_allclose(manifold_radii(big), np.partition(exact, 3, 1)[:, 3], rtol=1e-4)


def test_fp16_rounding_is_applied():
    u = np.array([[1.0 + 2.0**-12]], np.float32)  # rounds to 1.0 in float16
    v = np.array([[0.0]], np.float32)
    assert pairwise_sq_distances(u, v)[0, 0] == 1.0


def test_fallback_is_decided_per_evaluator_block():
    rng = np.random.default_rng(10)
    big = rng.gamma(1.0, 0.4, (30, 64)).astype(np.float32)
    big[-1] *= 400.0  # one huge row: its float16 norm overflows
    exact = np.maximum((big * big).sum(1)[:, None] - 2 * big @ big.T + (big * big).sum(1)[None, :], 0)
    # one block: all of it falls back to float32
    np.testing.assert_allclose(manifold_radii(big, block_size=10000), np.partition(exact, 3, 1)[:, 3], rtol=1e-5)
    # blocks of 10: only the blocks with row/column 29 fall back; the others keep float16 rounding
    r_blocks = manifold_radii(big, block_size=10, tile=5)
    r_exact = np.partition(exact, 3, 1)[:, 3]
    np.testing.assert_allclose(r_blocks, r_exact, rtol=2e-2)
    assert not np.allclose(r_blocks[:20], r_exact[:20], rtol=1e-6, atol=0)
