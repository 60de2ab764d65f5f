"""Fréchet distance (FID, sFID) and the Inception Score, exactly as OpenAI's evaluator computes them.

Source: guided-diffusion@22e0df8 ``evaluations/evaluator.py`` (``FIDStatistics``,
``Evaluator.compute_statistics``, ``Evaluator.compute_inception_score``), which follows
TTUR's ``fid.py`` and improved-gan's ``inception_score/model.py``.  NumPy / SciPy only, with
the evaluator's dtypes: μ is the float32 mean of float32 activations, Σ the float64 ``np.cov``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["FIDStatistics", "fid_statistics", "fid_statistics_streamed", "frechet_distance", "inception_score", "sqrtm"]


@dataclass(frozen=True)
class FIDStatistics:
    """Mean μ (D,) and covariance Σ (D, D) of a set of activations."""

    mu: np.ndarray
    sigma: np.ndarray

    def frechet_distance(self, other: "FIDStatistics", eps: float = 1e-6) -> float:
        """d(self, other); the evaluator calls ``sample_stats.frechet_distance(ref_stats)``."""
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, eps=eps)


def fid_statistics(activations: np.ndarray) -> FIDStatistics:
    """μ = mean over rows (float32 for float32 input), Σ = unbiased ``np.cov`` (float64)."""
    return FIDStatistics(np.mean(activations, axis=0), np.cov(activations, rowvar=False))


def sqrtm(a: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm(a)`` under every SciPy: ``disp=False`` where it exists (< 1.18)."""
    from scipy import linalg  # imported here: 0.2 s that commands other than evaluate need not pay

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are handled below
        try:
            out = linalg.sqrtm(a, disp=False)
        except TypeError:  # SciPy without the `disp` argument
            out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """d² = |μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁Σ₂)^½)  (Heusel et al. 2017, Eq. 6).

    As the evaluator: ``sqrtm(Σ₁ Σ₂)``; if that is not finite, retry with ``eps·I`` added to
    both covariances; a complex result is accepted (real part) only if its diagonal's
    imaginary part is within 1e-3 of zero, otherwise `ValueError`.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape}, {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different dimensions: {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 sigma2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """IS = mean over consecutive splits of exp(E_x KL(p(y|x) ‖ p(y)))  (Salimans et al. 2016).

    ``probs`` (N, K) are softmax outputs; splits are consecutive chunks of ``split_size``
    rows (the last may be shorter), no shuffling, float32 math as in the evaluator.  A
    probability of exactly 0 gives NaN (0·log 0), as it does there.
    """
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i : i + split_size]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def fid_statistics_streamed(chunks) -> FIDStatistics:
    """μ and Σ of the rows of ``chunks()`` (a callable returning an iterable of (n, D) arrays),
    in float64 and two passes, so memory is one chunk however many rows there are.

    Σ = Σ_i (x_i − μ)(x_i − μ)ᵀ / (N − 1), the unbiased estimate ``np.cov`` returns.
    """
    n, total = 0, None
    for x in chunks():
        x = np.asarray(x, np.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        n += len(x)
    if n < 2:
        raise ValueError(f"{n} row(s); at least 2 are needed for a covariance")
    mu = total / n
    scatter = np.zeros((len(mu), len(mu)))
    for x in chunks():
        centred = np.asarray(x, np.float64) - mu
        scatter += centred.T @ centred
    return FIDStatistics(mu, scatter / (n - 1))
