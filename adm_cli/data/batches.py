"""Training batches: a deterministic, resumable order, background loading and torch preprocessing.

The data order is a pure function of ``(n, global batch, step, seed)`` (`batch_indices`), so a
run resumed at step k sees exactly the batches it would have seen, on any number of ranks.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import ImageData

__all__ = ["batch_indices", "to_model_input", "random_flip", "random_resized_crop", "BatchLoader"]


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False  # shared by the cache
    return order


def batch_indices(n: int, batch_size: int, step: int, *, seed: int) -> np.ndarray:
    """int64 indices (batch_size,) of the global batch for training step ``step`` (0-based).

    The data is walked in epochs, epoch e being the permutation of range(n) drawn from
    ``np.random.default_rng([seed, e])``; batch k covers positions k*B .. k*B+B-1 of the
    concatenated epochs, so a batch may straddle two (or, when B > n, more) epochs.
    """
    if n < 1 or batch_size < 1 or step < 0 or seed < 0:
        raise ValueError(f"need n >= 1, batch_size >= 1, step >= 0, seed >= 0; got {n}, {batch_size}, {step}, {seed}")
    start, stop = step * batch_size, (step + 1) * batch_size  # positions in the concatenated epochs
    parts = []
    for epoch in range(start // n, (stop - 1) // n + 1):
        lo, hi = max(start - epoch * n, 0), min(stop - epoch * n, n)
        parts.append(_epoch_order(n, seed, epoch)[lo:hi])
    return np.concatenate(parts).astype(np.int64)


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W) in [-1, 1]: x / 127.5 - 1 (guided-diffusion's ImageDataset)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, C, H, W)


def _uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) uniforms in [0, 1) on the CPU, drawn from ``generator`` wherever it lives."""
    return torch.rand(n, generator=generator, device=generator.device).cpu()


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) horizontally with probability 0.5 (guided-diffusion's random_flip)."""
    flip = (_uniform(len(x), generator) < 0.5).to(x.device)[:, None, None, None]  # (B, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, *, min_crop_frac: float = 0.8) -> torch.Tensor:
    """The classifier's augmentation (guided-diffusion's random_crop_arr) on (B, C, H, W) in [-1, 1].

    Per image: the short side is scaled (bicubic) to an integer s uniform in [S, ceil(S /
    min_crop_frac)], S the short side, then a random H x W crop is taken; clamped to [-1, 1].
    """
    if not 0 < min_crop_frac <= 1:
        raise ValueError(f"min_crop_frac must be in (0, 1], got {min_crop_frac}")
    b, _, h, w = x.shape
    short = min(h, w)
    choices = math.ceil(short / min_crop_frac) - short + 1
    sides = short + (_uniform(b, generator) * choices).long().clamp(max=choices - 1)  # (B,)
    u_top, u_left = _uniform(b, generator), _uniform(b, generator)
    out = torch.empty_like(x)
    for side in sides.unique().tolist():
        rows = (sides == side).nonzero().flatten()
        size = (round(h * side / short), round(w * side / short))
        # Only upscaling happens here (side >= short), where antialiasing has no effect.
        big = F.interpolate(x[rows.to(x.device)], size=size, mode="bicubic", align_corners=False)
        for j, i in enumerate(rows.tolist()):
            top = int(u_top[i] * (size[0] - h + 1))
            left = int(u_left[i] * (size[1] - w + 1))
            out[i] = big[j, :, top : top + h, left : left + w]
    return out.clamp(-1, 1)


class BatchLoader:
    """Iterates ``(step, images uint8 (b, H, W, C), labels (b,) or None)`` for steps
    ``start_step, start_step + 1, ...`` forever.

    Each rank gets its contiguous slice ``[rank*b : (rank+1)*b]`` of the global batch
    (`batch_indices`), b = global_batch // world_size.  The next ``prefetch`` batches are
    loaded by ``workers`` background threads (PIL decoding releases the GIL), overlapping
    the training step; `close` (or leaving a ``with`` block) stops them.
    """

    def __init__(
        self,
        data: ImageData,
        global_batch: int,
        *,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        workers: int = 2,
    ) -> None:
        if global_batch < 1 or world_size < 1 or global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if prefetch < 0 or workers < 1 or start_step < 0:
            raise ValueError(
                f"need prefetch >= 0, workers >= 1, start_step >= 0; got {prefetch}, {workers}, {start_step}"
            )
        self.data, self.global_batch, self.seed = data, global_batch, seed
        self.rank, self.local_batch = rank, global_batch // world_size
        self.prefetch = prefetch
        self._next_step = start_step  # the next step to hand out
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adm-data")
        self._pending: deque[tuple[int, Future]] = deque()
        self._closed = False

    def load(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """This rank's (images, labels) of training step ``step``, loaded in the calling thread."""
        indices = batch_indices(len(self.data), self.global_batch, step, seed=self.seed)
        return self.data.get(indices[self.rank * self.local_batch : (self.rank + 1) * self.local_batch])

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        return self

    def __next__(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        if self._closed:
            raise StopIteration
        # Keep the current step plus `prefetch` more in flight.
        while len(self._pending) < self.prefetch + 1:
            step = self._next_step + len(self._pending)
            self._pending.append((step, self._pool.submit(self.load, step)))
        step, future = self._pending.popleft()
        self._next_step = step + 1
        images, labels = future.result()
        return step, images, labels

    def close(self) -> None:
        """Cancel the batches not started and wait for the running ones."""
        self._closed = True
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
