"""Density and coverage (Naeem, Oh, Uh, Choi, Yoo 2020, "Reliable Fidelity and Diversity Metrics
for Generative Models"), as the authors' reference code computes them.

Source: ``prdc/prdc.py`` of clovaai/generative-evaluation-prdc (PyPI ``prdc`` 0.2), k = 5:

- ``r_i``: the distance from real point ``R_i`` to its k-th nearest other real point (prdc takes
  the (k+1)-th smallest entry of the row of distances, the zero self-distance included);
- density  = 1/(kM) · Σ_j Σ_i 1[‖F_j − R_i‖ < r_i]   (may exceed 1);
- coverage = 1/N    · Σ_i 1[min_j ‖R_i − F_j‖ < r_i].

Unlike precision / recall (OpenAI's float16 ``ManifoldEstimator`` conventions, k = 3), distances
here are plain Euclidean ones: prdc uses scikit-learn's, which are computed in float64 (float32
inputs are upcast).  They are computed here in float64 too, with the same tiles, blocks and
k-smallest bookkeeping as precision / recall (`precision_recall`, ``exact=True``), and squared
distances are compared (``d² < r²`` is ``d < r`` without a rounded square root).  Golden values
from prdc itself: assets/golden/prdc/.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .features import exact_fp32
from .precision_recall import _block_distances, _blocks, _Features, _manifold_radii

__all__ = ["DENSITY_COVERAGE_K", "density_coverage"]

DENSITY_COVERAGE_K = 5  # the paper's and prdc's recommended k


def density_coverage(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    k: int = DENSITY_COVERAGE_K,
    block_size: int = 10000,
    tile: int = 2048,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """``(density, coverage)`` of ``fake`` (M, D) against ``real`` (N, D), N > k.

    ``progress`` is told the number of distance pairs done: N² for the radii, then N·M."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D); got {real.shape} and {fake.shape}")
    if k < 1 or len(real) <= k:
        raise ValueError(f"density/coverage need more than k = {k} real points, got {len(real)}")
    if len(fake) < 1:
        raise ValueError("density/coverage need at least one fake point")
    with exact_fp32():
        return _density_coverage(real, fake, k, block_size, tile, torch.device(device), progress)


def _density_coverage(real, fake, k, block_size, tile, dev, progress) -> tuple[float, float]:
    radii = torch.as_tensor(_manifold_radii(real, k, block_size, tile, dev, progress, exact=True), device=dev)
    a, b = _Features(real, dev, exact=True), _Features(fake, dev, exact=True)
    inside = torch.zeros(len(b), dtype=torch.int64, device=dev)  # per fake point: real balls it lies in
    covered = torch.zeros(len(a), dtype=torch.bool, device=dev)  # per real point: some fake in its ball
    for ra in _blocks(len(a), block_size):
        for rb in _blocks(len(b), block_size):
            for i, j, dot, combine in _block_distances(a, b, ra, rb, min(tile, block_size)):
                hit = combine(i, dot, j) < radii[i][:, None]  # (real rows, fake cols), strict as in prdc
                inside[j] += hit.sum(0)
                covered[i] |= hit.any(1)
            if progress is not None:
                progress((ra.stop - ra.start) * (rb.stop - rb.start))
    density = (1.0 / k) * (int(inside.sum().item()) / len(b))  # prdc's operation order: (1/k) · mean
    coverage = float(covered.sum().item()) / len(a)
    return density, coverage
