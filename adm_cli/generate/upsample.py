"""Super-resolution sampling from a base batch (ADM Sec. 5; guided-diffusion `super_res_sample.py`).

Base image i (uint8, scaled to [-1, 1] as `x / 127.5 - 1`) conditions the super-resolution
UNet, which upsamples it bilinearly and concatenates it to x_t; its label goes to a
class-conditional model. Image i's x_T and per-step noise come from a generator seeded
`seed + i`, as in `adm sample`, so the output does not depend on the batch size or on where a
killed run stopped. The base batch is streamed: memory holds one chunk of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from adm_cli.version import __version__
from adm_cli.backend import Backend, Dist
from adm_cli.checkpoint import Loaded, file_digest
from adm_cli.config import UNetConfig
from adm_cli.data.batches import to_model_input
from adm_cli.data.images import to_uint8
from adm_cli.data.sample_reader import list_sample_images
from adm_cli.data.samples import SampleWriter, iter_sample_batches, open_sample_writer, read_labels, sample_info
from adm_cli.generate.denoise import check_compatible, initial_state, sample_batch, sampling_schedule
from adm_cli.generate.options import GenerateError, SampleOptions, describe_steps
from adm_cli.generate.sampling import fingerprint
from adm_cli.generate.stream import stream_samples
from adm_cli.reporting import SILENT, Reporter

__all__ = ["BaseBatch", "base_digest", "check_base", "run_upsampling"]


@dataclasses.dataclass(frozen=True)
class BaseBatch:
    """What `check_base` found in a base batch: its path, whether the output gets labels (from
    the file or --class), and its digest (part of the resume fingerprint)."""

    path: Path
    has_labels: bool
    digest: str


def check_base(model: Loaded, base: str | Path, options: SampleOptions) -> BaseBatch:
    """Refuse a base batch that does not fit the model, with one line; reads headers and labels only.

    `options.num` is how many of its images (the first ones) are upsampled.
    """
    unet = model.config
    if model.kind != "super-res" or not isinstance(unet, UNetConfig) or unet.low_res_size is None:
        raise GenerateError(f"{model.path}: is a {model.kind} checkpoint; adm upsample needs a super-resolution model (sample it with adm sample)")
    path = Path(base)
    n, (h, w, c), has_labels = sample_info(path)
    small = unet.low_res_size
    if (h, w) != (small, small):
        hint = " (a bare state dict of unpublished structure: give its input size with --low-res-size)" if (
            model.source == "openai" and model.preset is None) else ""
        raise GenerateError(
            f"{path}: base images are {h}x{w}, the model upsamples {small}x{small} to {unet.image_size}x{unet.image_size}{hint}"
        )
    if c != unet.in_channels:
        raise GenerateError(f"{path}: base images have {c} channels, the model takes {unet.in_channels}")
    if options.num > n:
        raise GenerateError(f"--num {options.num} is out of range: {path} holds {n} images")
    n_classes = unet.num_classes
    if options.class_label is not None and has_labels:
        raise GenerateError(f"{path}: has labels; --class would override them (drop --class)")
    if options.guidance_scale != 0:
        raise GenerateError("adm upsample does not take classifier guidance")
    check_compatible(model, None, options)  # --class range, respacing
    if n_classes is not None and options.class_label is None:
        labels = read_labels(path)
        if labels is None:
            raise GenerateError(f"{path}: has no labels (arr_1) and the upsampler is class-conditional; pass --class C")
        lo, hi = int(labels[: options.num].min()), int(labels[: options.num].max())
        if lo < 0 or hi >= n_classes:
            raise GenerateError(f"{path}: labels span [{lo}, {hi}], the upsampler has {n_classes} classes [0, {n_classes - 1}]")
    return BaseBatch(path, has_labels or options.class_label is not None, base_digest(path))


def base_digest(path: Path) -> str:
    """SHA-256 of a base file, or of an image folder's file names and contents (resume fingerprint)."""
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.sha256()
    for f in list_sample_images(path):
        h.update(f"{f.name}\0{file_digest(f)}\0".encode())
    return h.hexdigest()


def run_upsampling(
    model: Loaded,
    base: BaseBatch,
    out: str | Path,
    options: SampleOptions,
    *,
    backend: Backend,
    reporter: Reporter = SILENT,
    dist: Dist = Dist(),
    overwrite: bool = False,
    grid: str | Path | None = None,
    command: str = "",
) -> Path:
    """Upsample the first `options.num` images of `base` (checked by `check_base`) into `out`
    (.npz or .h5), resuming a killed run. Labels are carried from the base batch (or
    `options.class_label` for every image) to the model and to the output.
    """
    unet = model.config
    assert isinstance(unet, UNetConfig) and model.diffusion is not None
    schedule = sampling_schedule(model, options).to(backend.device)
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    model.model = backend.prepare(model.model)
    summary = (
        f"super-res model ({model.preset or model.source}, {model.num_parameters / 1e6:.1f}M parameters), "
        f"{unet.low_res_size}->{unet.image_size} on {backend.device} in {backend.precision}; "
        f"{describe_steps(options, schedule)}"
        + f"; {options.num} images from {base.path}"
    )

    def open_writer() -> SampleWriter:
        meta = {
            "fingerprint": fingerprint(model, None, options, backend, extra={"base": base.digest}),
            "command": command,
            "base": {"path": str(base.path), "sha256": base.digest},
            "config": {"unet": unet.to_dict(), "diffusion": model.diffusion.to_dict()},  # type: ignore[union-attr]
            "options": dataclasses.asdict(options),
            "seeds": f"{options.seed}..{options.seed + options.num - 1} (image i: seed + i)",
            "adm_version": __version__,
        }
        return open_sample_writer(
            out, total=options.num, image_shape=(unet.image_size, unet.image_size, unet.in_channels),
            meta=meta, overwrite=overwrite, has_labels=base.has_labels,
        )

    reader: Iterator[tuple[np.ndarray, np.ndarray | None]] | None = None

    def produce(chunk: range, mine: range, progress: Callable[[int, int], None]) -> tuple[np.ndarray, np.ndarray | None]:
        nonlocal reader
        if reader is None:  # chunks are consecutive from the first one not yet written
            reader = iter_sample_batches(base.path, len(chunk), start=chunk.start)
        images, labels = next(reader)
        images = images[: len(chunk)]
        if options.class_label is not None:
            labels = np.full(len(images), options.class_label, np.int64)
        elif labels is not None:
            labels = np.asarray(labels[: len(chunk)], np.int64)
        part = slice(mine.start - chunk.start, mine.stop - chunk.start)
        low, y = images[part], None if labels is None else labels[part]
        x_T, _, gens = initial_state(mine, shape=shape, num_classes=None, class_label=None, seed=options.seed)
        x0 = sample_batch(
            model, x_T, schedule=schedule, options=options, backend=backend, generators=gens,
            labels=torch.from_numpy(y) if (y is not None and unet.num_classes is not None) else None,
            model_kwargs={"low_res": to_model_input(low)}, progress=progress,
        )
        return to_uint8(x0), y

    return stream_samples(
        out, total=options.num, batch_size=options.batch_size, image_shape=(unet.image_size, unet.image_size, unet.in_channels),
        open_writer=open_writer, produce=produce, reporter=reporter, dist=dist, grid=grid, summary=summary,
    )
