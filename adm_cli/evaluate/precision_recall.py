"""Improved Precision and Recall (Kynkäänniemi et al. 2019) as OpenAI's evaluator computes them.

Source: guided-diffusion@22e0df8 ``evaluations/evaluator.py`` (``ManifoldEstimator``,
``DistanceBlock``), adapted there from kynkaat/improved-precision-and-recall-metric.

- Distances are SQUARED Euclidean, ``D = max(|u|² − 2 u·v + |v|², 0)``, computed from the
  features rounded to float16 with float16 arithmetic, as TF does: squared norms summed in
  float16 (in the order of TF's CPU kernel), products accumulated in float32 and rounded once,
  every further result rounded to float16.  If any entry of an
  evaluator block (``block_size`` × ``block_size``, 10,000 there) is not finite, that block
  is recomputed in float32.
- The radius of a point is the (k+1)-th smallest distance to its own set, self included:
  the distance to its k-th nearest other point; k = 3.
- A sample is "in" the reference manifold if ``D(ref_i, sample) <= r_i`` for some i
  (precision = fraction of samples in); recall swaps the roles.

Work is done in tiles within each evaluator block, keeping only the k+1 smallest
distances per row, so memory is bounded by the tile, not by N.  The self-distance matrix
is symmetric in its products: each tile's ``u·v`` is computed once and used for both
orientations (the float16 sums are still formed in the evaluator's operand order).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .features import exact_fp32

__all__ = ["pairwise_sq_distances", "manifold_radii", "precision_recall"]

FP16_MAX = 65504.0


def _round16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to float16 precision, kept in float32."""
    return x.to(torch.float16).to(torch.float32)


def _hadd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float16 addition (operands hold float16 values in float32)."""
    return _round16(a + b)


def _eigen_half_leaf(x: torch.Tensor, packet: int = 8) -> torch.Tensor:
    """Eigen's vectorised half sum of each row of ``x`` (≤ 1600 values): four float16 packet
    accumulators over 32-value chunks, then one packet over 8-value chunks, a float16 scalar
    accumulator for the tail, and the packet's lanes added in float32 and rounded once."""
    n_rows, n = x.shape
    p0 = torch.zeros(n_rows, packet, device=x.device)
    start = 0
    if n >= 4 * packet:
        v4 = (n // (4 * packet)) * 4 * packet
        chunks = x[:, :v4].reshape(n_rows, v4 // (4 * packet), 4, packet)  # (N, chunk, accumulator, lane)
        acc = torch.zeros(n_rows, 4, packet, device=x.device)
        for t in range(chunks.shape[1]):
            acc = _hadd(acc, chunks[:, t])
        p0 = _hadd(_hadd(_hadd(acc[:, 0], acc[:, 1]), acc[:, 2]), acc[:, 3])
        start = v4
    vs = (n // packet) * packet
    for j in range(start, vs, packet):
        p0 = _hadd(p0, x[:, j : j + packet])
    tail = torch.zeros(n_rows, device=x.device)
    for j in range(vs, n):
        tail = _hadd(tail, x[:, j])
    lanes = p0
    while lanes.shape[1] > 4:  # predux: float32 horizontal sum of the 8 lanes
        k = lanes.shape[1] // 2
        lanes = lanes[:, :k] + lanes[:, k:]
    return _hadd(tail, _round16((lanes[:, 0] + lanes[:, 2]) + (lanes[:, 1] + lanes[:, 3])))


def _eigen_half_tree(x: torch.Tensor, first_mod: int, packet: int = 8, leaf: int = 200) -> torch.Tensor:
    """Eigen's InnerMostDimReducer tree: rows longer than ``packet·leaf`` split in two at a
    packet boundary of the absolute flat index, halves summed in float16."""
    n = x.shape[1]
    if n <= packet * leaf:
        return _eigen_half_leaf(x, packet)
    split = packet * -(-(first_mod + -(-n // 2)) // packet) - first_mod
    left = min(split, n)
    acc = _hadd(torch.zeros(x.shape[0], device=x.device), _eigen_half_tree(x[:, :left], first_mod, packet, leaf))
    if left < n:
        acc = _hadd(acc, _eigen_half_tree(x[:, left:], (first_mod + left) % packet, packet, leaf))
    return acc


def _norms16(u16: torch.Tensor, first_row: int = 0) -> torch.Tensor:
    """``reduce_sum(square(u), 1)`` in float16 as TensorFlow computes it on a CPU.

    Squares are rounded to float16 and SUMMED IN FLOAT16 (TF widens only bfloat16 sums), in the
    order of Eigen's ``SumReducer<half>`` tree (row r starts at flat index r·K, which moves the
    split when K is not a multiple of 8; ``first_row`` is the index of ``u16``'s first row).  Bit-exact against TF 2.21's CPU kernel
    (assets/golden/evaluate/README.md); on a GPU TF also accumulates in float16, in cub's order.
    """
    sq = _round16(u16 * u16)
    n_rows, k = sq.shape
    out = torch.empty(n_rows, device=sq.device)
    firsts = ((torch.arange(n_rows, device=sq.device) + first_row) * k) % 8
    for fm in torch.unique(firsts).tolist():
        sel = firsts == fm
        out[sel] = _eigen_half_tree(sq[sel], int(fm))
    return out


def _combine16(nu: torch.Tensor, dot: torch.Tensor, nv: torch.Tensor, *, in_range: bool) -> torch.Tensor:
    """``max(nu − 2·dot + nv, 0)`` in float16 arithmetic (each operation rounded once), as float32.

    ``nu``, ``dot``, ``nv`` are float16 tensors.  ``in_range``: the block is known not to reach the
    float16 range, so 2·dot is exact and in range and ``nu − 2·dot`` can be one fused operation
    (it rounds identically); otherwise 2·dot is formed in float16 first, as TF does, so that an
    overflow becomes inf exactly where it does there.
    """
    d = torch.sub(nu[:, None], dot, alpha=2) if in_range else nu[:, None] - dot * 2
    d = d + nv[None, :]
    return d.clamp_min_(0).float()  # NaN stays NaN (and forces the float32 path)


def _combine32(nu: torch.Tensor, dot: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
    return torch.clamp_min(nu[:, None] - 2.0 * dot + nv[None, :], 0.0)


class _Features:
    """One feature set: the float32 rows (not copied), their float16 roundings and both kinds of
    squared norms.  Extra memory is the float16 copy, 2 bytes per value; norms go in row chunks.

    ``exact=True`` (density / coverage, `adm_cli.evaluate.prdc`): the rows in float64 and no
    float16 side at all; the blocks then always take the full-precision path (``f32``/``n32``
    hold float64 there)."""

    def __init__(self, x: np.ndarray | torch.Tensor, device: torch.device, chunk: int = 4096, *, exact: bool = False):
        self.exact = exact
        self.f32 = torch.as_tensor(np.asarray(x, dtype=np.float64 if exact else np.float32), device=device)
        self.f16 = None if exact else self.f32.half()
        n = len(self.f32)
        self.n32 = torch.empty(n, dtype=self.f32.dtype, device=device)
        self.n16 = None if exact else torch.empty(n, dtype=torch.float16, device=device)
        for s in range(0, n, chunk):
            rows = slice(s, min(s + chunk, n))
            self.n32[rows] = (self.f32[rows] * self.f32[rows]).sum(1)
            if not exact:
                self.n16[rows] = _norms16(self.f16[rows].float(), first_row=s).half()

    def __len__(self) -> int:
        return self.f32.shape[0]

    def dot16(self, i: slice, other: "_Features", j: slice) -> torch.Tensor:
        """u·v for rows i × other's rows j: exact products and float32 sums (a float32 GEMM of
        float16 values), rounded to float16."""
        return (self.f16[i].float() @ other.f16[j].float().T).half()


def _fp16_block_mode(a: _Features, b: _Features, ra: slice, rb: slice, tile: int) -> str | None:
    """How the evaluator's float16 block rows ``ra`` × cols ``rb`` is computed: ``"in_range"``
    (no entry can overflow), ``"fp16"`` (finite, checked tile by tile) or None (float32 fallback)."""
    nu, nv = a.n16[ra].float(), b.n16[rb].float()
    if not (torch.isfinite(nu).all() and torch.isfinite(nv).all()):
        return None
    # |nu − 2u·v + nv| <= 2(nu + nv) and |2u·v| <= nu + nv: far from the float16 range, nothing overflows.
    if 2.0 * (nu.max() + nv.max()) < FP16_MAX / 2:
        return "in_range"
    for i, j in _tiles(ra, rb, tile):
        if not torch.isfinite(_combine16(a.n16[i], a.dot16(i, b, j), b.n16[j], in_range=False)).all():
            return None
    return "fp16"


def _tiles(ra: slice, rb: slice, tile: int) -> Iterator[tuple[slice, slice]]:
    for i in range(ra.start, ra.stop, tile):
        for j in range(rb.start, rb.stop, tile):
            yield slice(i, min(i + tile, ra.stop)), slice(j, min(j + tile, rb.stop))


def _blocks(n: int, block: int) -> list[slice]:
    return [slice(i, min(i + block, n)) for i in range(0, n, block)]


def pairwise_sq_distances(u: np.ndarray, v: np.ndarray, *, device: str | torch.device = "cpu") -> np.ndarray:
    """The evaluator's ``DistanceBlock.pairwise_distances(U, V)`` for one block: (n, m) float32."""
    a, b = _Features(u, torch.device(device)), _Features(v, torch.device(device))
    every = slice(0, len(a)), slice(0, len(b))
    d = _combine16(a.n16, a.dot16(every[0], b, every[1]), b.n16, in_range=False)
    if not torch.isfinite(d).all():
        d = _combine32(a.n32, a.f32 @ b.f32.T, b.n32)
    return d.cpu().numpy()


Combine = Callable[[slice, torch.Tensor, slice], torch.Tensor]


def _block_distances(
    a: _Features, b: _Features, ra: slice, rb: slice, tile: int, *, upper: bool = False
) -> Iterator[tuple[slice, slice, torch.Tensor, Combine]]:
    """Tiles ``(rows, cols, dot, combine)`` of one evaluator block, in its chosen precision;
    ``combine(i, dot, j)`` turns products into distances (``combine(j, dot.T, i)`` for the mirror).
    ``upper``: only tiles on or above the diagonal (a symmetric block's lower tiles are mirrors).
    Exact features (both ``exact``) always take the full-precision path."""
    mode = None if a.exact or b.exact else _fp16_block_mode(a, b, ra, rb, tile)
    for i, j in _tiles(ra, rb, tile):
        if upper and i.start > j.start:
            continue
        if mode is not None:
            yield i, j, a.dot16(i, b, j), lambda i, dot, j: _combine16(a.n16[i], dot, b.n16[j], in_range=mode == "in_range")
        else:
            yield i, j, a.f32[i] @ b.f32[j].T, lambda i, dot, j: _combine32(a.n32[i], dot, b.n32[j])


def _smallest(best: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest of each row of ``best`` and ``d`` together (values, ascending)."""
    if d.shape[1] > k:
        d = torch.topk(d, k, dim=1, largest=False, sorted=False).values
    return torch.topk(torch.cat([best, d], 1), k, dim=1, largest=False, sorted=True).values


def manifold_radii(
    features: np.ndarray,
    *,
    k: int = 3,
    block_size: int = 10000,
    tile: int = 2048,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    exact: bool = False,
) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point: (N,) float32.

    ``np.partition(row, k)[k]`` over the full row of the evaluator's distances (self included).
    ``exact``: plain float64 distances instead of the evaluator's float16 ones ((N,) float64).
    """
    with exact_fp32():
        return _manifold_radii(features, k, block_size, tile, torch.device(device), progress, exact=exact)


def _manifold_radii(features, k, block_size, tile, device, progress, *, exact: bool = False) -> np.ndarray:
    a = _Features(features, device, exact=exact)
    n = len(a)
    best = torch.full((n, k + 1), float("inf"), dtype=a.f32.dtype, device=a.f32.device)
    blocks = _blocks(n, block_size)
    for bi, ra in enumerate(blocks):
        for rb in blocks[bi:]:
            for i, j, dot, combine in _block_distances(a, a, ra, rb, min(tile, block_size), upper=ra == rb):
                best[i] = _smallest(best[i], combine(i, dot, j), k + 1)
                if i != j:  # the mirror tile: rows j, same products in the other operand order
                    best[j] = _smallest(best[j], combine(j, dot.T, i), k + 1)
            if progress is not None:
                progress((ra.stop - ra.start) * (rb.stop - rb.start) * (1 if ra == rb else 2))
    return best[:, k].cpu().numpy()


def precision_recall(
    ref: np.ndarray,
    samples: np.ndarray,
    *,
    k: int = 3,
    block_size: int = 10000,
    tile: int = 2048,
    device: str | torch.device = "cpu",
    radii: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """``(precision, recall)`` of ``samples`` against ``ref`` (the evaluator's ``compute_prec_recall``)."""
    with exact_fp32():  # TF32 would make the products inexact on GPUs
        return _precision_recall(ref, samples, k, block_size, tile, torch.device(device), radii, progress)


def _precision_recall(ref, samples, k, block_size, tile, dev, radii, progress) -> tuple[float, float]:
    if radii is None:
        r_ref = _manifold_radii(ref, k, block_size, tile, dev, progress)
        r_sam = _manifold_radii(samples, k, block_size, tile, dev, progress)
    else:
        r_ref, r_sam = radii
    a, b = _Features(ref, dev), _Features(samples, dev)
    r_a = torch.as_tensor(np.asarray(r_ref, np.float32), device=dev)
    r_b = torch.as_tensor(np.asarray(r_sam, np.float32), device=dev)
    ref_in = torch.zeros(len(a), dtype=torch.bool, device=dev)
    sam_in = torch.zeros(len(b), dtype=torch.bool, device=dev)
    for ra in _blocks(len(a), block_size):
        for rb in _blocks(len(b), block_size):
            for i, j, dot, combine in _block_distances(a, b, ra, rb, min(tile, block_size)):
                d = combine(i, dot, j)  # (ref rows, sample cols)
                # d <= r  ⟺  d − r <= 0 (exact in IEEE arithmetic); min-reductions are the fast form
                ref_in[i] |= (d - r_b[j][None, :]).amin(1) <= 0
                sam_in[j] |= (d - r_a[i][:, None]).amin(0) <= 0
            if progress is not None:
                progress((ra.stop - ra.start) * (rb.stop - rb.start))
    precision = float(np.mean(sam_in.cpu().numpy().astype(np.float64)))
    recall = float(np.mean(ref_in.cpu().numpy().astype(np.float64)))
    return precision, recall
