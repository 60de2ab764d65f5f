"""The resumable chunk loop shared by `adm sample` and `adm upsample` (one writer, torchrun ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from adm_cli.backend import Dist
from adm_cli.data.images import save_grid
from adm_cli.data.samples import SampleWriter, read_samples
from adm_cli.generate.options import GenerateError
from adm_cli.reporting import SILENT, Reporter


Produce = Callable[[range, range, Callable[[int, int], None]], tuple[np.ndarray, "np.ndarray | None"]]


def stream_samples(
    out: str | Path,
    *,
    total: int,
    batch_size: int,
    image_shape: tuple[int, int, int],
    open_writer: Callable[[], SampleWriter],
    produce: Produce,
    reporter: Reporter = SILENT,
    dist: Dist = Dist(),
    grid: str | Path | None = None,
    summary: str = "",
) -> Path:
    """Generate images 0..total-1 into a sample file in chunks, resuming where a killed run stopped.

    Chunks hold `batch_size` images per process. `produce(chunk, mine, progress)` makes the
    images of `mine` (this process's contiguous share of `chunk`, never empty) as uint8 NHWC
    `image_shape` with their labels (or None); rank 0 gathers each chunk and writes it before the
    next one starts. Only the last chunk can leave a process without a share.
    """
    writer: SampleWriter | None = None
    done = torch.full((), -1, dtype=torch.int64)  # -1 tells the other ranks that rank 0 failed
    try:
        if dist.is_main:
            writer = open_writer()
            done.fill_(writer.done)
            if summary:
                reporter.info(summary)  # only once the output is known to be usable
            if writer.done:
                reporter.info(f"resuming {out}: {writer.done}/{total} samples already written")
    finally:
        _broadcast(done, dist)
    if int(done) < 0:
        raise GenerateError("rank 0 could not open the output; see its error")
    start = int(done)

    try:
        step = batch_size * dist.world_size
        with reporter.progress("sampling", total, completed=start) as tick:
            for chunk_start in range(start, total, step):
                chunk_end = min(chunk_start + step, total)
                per = -(-(chunk_end - chunk_start) // dist.world_size)
                lo = min(chunk_start + dist.rank * per, chunk_end)
                hi = min(lo + per, chunk_end)
                n_chunk = chunk_end - chunk_start

                def step_done(i: int, steps: int, n_chunk: int = n_chunk) -> None:
                    tick(n_chunk / steps)  # the bar moves with every denoising step, in images

                if hi > lo:
                    images, labels = produce(range(chunk_start, chunk_end), range(lo, hi), step_done)
                else:
                    images, labels = np.zeros((0, *image_shape), np.uint8), None
                has_labels = labels is not None
                if labels is None:  # all_gather needs an array on every rank
                    labels = np.full(len(images), -1, np.int64)
                images, labels = _gather(images, labels, dist)
                if writer is not None:
                    writer.write(images, labels if has_labels else None, start=chunk_start)
                tick.to(chunk_end)
        if writer is not None:
            final = writer.finalize()
            if grid is not None:
                imgs, _ = read_samples(final)
                save_grid(np.asarray(imgs[: min(64, len(imgs))]), grid)
            return final
        return Path(out)
    finally:
        if writer is not None:
            writer.close()


def _broadcast(value: torch.Tensor, dist: Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.broadcast(value, src=0)


def _gather(images: np.ndarray, labels: np.ndarray, dist: Dist) -> tuple[np.ndarray, np.ndarray]:
    """Collect every rank's contiguous slice of a chunk on rank 0, in index order."""
    if dist.world_size == 1:
        return images, labels
    import torch.distributed as tdist

    parts: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(parts, (images, labels))
    return (
        np.concatenate([p[0] for p in parts], axis=0),
        np.concatenate([p[1] for p in parts], axis=0),
    )
