"""Batched, seeded, resumable generation into a sample file (`adm sample`) and in memory.

Image i is drawn from its own generator seeded with `seed + i`: its class (when random), its
x_T and every step's noise come from that generator alone, so a sample does not depend on the
batch size, on where a killed run stopped, or on how torchrun split the work. Balanced classes
(`balanced_labels`) are a function of (seed, K, i) alone, for the same reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adm_cli.backend import Backend, Dist
from adm_cli.checkpoint import Loaded, file_digest
from adm_cli.config import UNetConfig
from adm_cli.data.images import to_uint8
from adm_cli.data.samples import SampleWriter, open_sample_writer
from adm_cli.diffusion import Schedule
from adm_cli.generate.denoise import (
    check_compatible,
    initial_state,
    num_label_classes,
    sample_batch,
    sampling_schedule,
)
from adm_cli.generate.options import ClassMode, GenerateError, Sampler, SampleOptions, describe_steps
from adm_cli.generate.stream import stream_samples
from adm_cli.reporting import SILENT, Reporter
from adm_cli.version import __version__


def fingerprint(model: Loaded, classifier: Loaded | None, options: SampleOptions, backend: Backend, extra: dict | None = None) -> str:
    """What must not change between a killed run and its resumption."""
    fields = dataclasses.asdict(options)
    fields.pop("batch_size")
    if fields["classes"] == "random":  # recorded only when balanced: partial files from before --classes still resume
        fields.pop("classes")
    return json.dumps(
        {
            "model": file_digest(model.path),
            "classifier": file_digest(classifier.path) if classifier is not None else None,
            "options": fields,
            "precision": backend.precision,
            **(extra or {}),
        },
        sort_keys=True,
    )


def run_sampling(
    model: Loaded,
    out: str | Path,
    options: SampleOptions,
    *,
    backend: Backend,
    classifier: Loaded | None = None,
    reporter: Reporter = SILENT,
    dist: Dist = Dist(),
    overwrite: bool = False,
    grid: str | Path | None = None,
    command: str = "",
) -> Path:
    """Sample `options.num` images into `out` (.npz or .h5), resuming a killed run."""
    check_compatible(model, classifier, options)
    unet = model.config
    assert isinstance(unet, UNetConfig) and model.diffusion is not None
    schedule = sampling_schedule(model, options).to(backend.device)
    num_classes = num_label_classes(model, classifier)
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    model.model = backend.prepare(model.model)
    if classifier is not None:
        classifier.model = backend.prepare(classifier.model)

    summary = (
        f"{model.kind} model ({model.preset or model.source}, {model.num_parameters / 1e6:.1f}M parameters) on "
        f"{backend.device} in {backend.precision}; {describe_steps(options, schedule)}"
        + (f", classifier guidance {options.guidance_scale}" if classifier is not None else "")
        + (f"; {options.num // num_classes} images of each of {num_classes} classes"
           if options.classes == "balanced" and num_classes else "")
    )

    def open_writer() -> SampleWriter:
        return _open_writer(model, classifier, options, backend, out, overwrite=overwrite, command=command,
                            has_labels=num_classes is not None)

    def produce(chunk: range, mine: range, progress: Callable[[int, int], None]) -> tuple[np.ndarray, np.ndarray | None]:
        return _sample_range(
            model, mine, shape=shape, num_classes=num_classes, schedule=schedule,
            options=options, backend=backend, classifier=classifier, progress=progress,
        )

    return stream_samples(
        out, total=options.num, batch_size=options.batch_size, image_shape=(unet.image_size, unet.image_size, unet.in_channels),
        open_writer=open_writer, produce=produce, reporter=reporter, dist=dist, grid=grid, summary=summary,
    )


def _open_writer(
    model: Loaded,
    classifier: Loaded | None,
    options: SampleOptions,
    backend: Backend,
    out: str | Path,
    *,
    overwrite: bool,
    command: str,
    has_labels: bool,
) -> SampleWriter:
    unet = model.config
    assert isinstance(unet, UNetConfig) and model.diffusion is not None
    meta = {
        "fingerprint": fingerprint(model, classifier, options, backend),
        "command": command,
        "config": {"unet": unet.to_dict(), "diffusion": model.diffusion.to_dict()},
        "options": dataclasses.asdict(options),
        "seeds": f"{options.seed}..{options.seed + options.num - 1} (image i: seed + i)",
        "adm_version": __version__,
    }
    return open_sample_writer(
        out,
        total=options.num,
        image_shape=(unet.image_size, unet.image_size, unet.in_channels),
        meta=meta,
        overwrite=overwrite,
        has_labels=has_labels,
    )


def _sample_range(
    model: Loaded,
    indices: range,
    *,
    shape: tuple[int, int, int],
    num_classes: int | None,
    schedule: Schedule,
    options: SampleOptions,
    backend: Backend,
    classifier: Loaded | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    x_T, labels, gens = initial_state(
        indices, shape=shape, num_classes=num_classes, class_label=options.class_label, seed=options.seed,
        classes=options.classes,
    )
    x0 = sample_batch(
        model, x_T, schedule=schedule, options=options, backend=backend, generators=gens,
        labels=labels, classifier=classifier, progress=progress,
    )
    return to_uint8(x0), None if labels is None else labels.numpy()


def sample_images(
    model: Loaded,
    num: int,
    *,
    sampler: Sampler = "ddpm",
    respacing: str | None = None,
    spacing: str | None = None,
    eta: float = 0.0,
    classifier: Loaded | None = None,
    guidance_scale: float = 0.0,
    cfg_scale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    dynamic_threshold: float | None = None,
    class_label: int | None = None,
    classes: ClassMode = "random",
    seed: int = 0,
    x_T: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    low_res: torch.Tensor | None = None,
    backend: Backend | None = None,
    clip_denoised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample `num` images in memory (one batch): returns (x_0 in [-1, 1] NCHW float32, labels).

    `x_T` (num, C, H, W) replaces the seeded initial noise; per-step noise still comes from
    the per-image generators seeded `seed + i`. `labels` replaces the drawn classes (`classes`:
    random per image, or balanced, num/K of each).
    `respacing` is a guided-diffusion spec, or with `spacing` (time-uniform, logsnr, karras) a
    step count; `cfg_scale` is classifier-free guidance w (models with a null class).
    """
    from adm_cli.backend import make_backend

    backend = backend or make_backend("cpu", "fp32")
    options = SampleOptions(
        num=num, sampler=sampler, respacing=respacing, spacing=spacing, eta=eta, guidance_scale=guidance_scale,
        cfg_scale=cfg_scale, guidance_interval=guidance_interval, dynamic_threshold=dynamic_threshold,
        class_label=class_label, classes=classes, seed=seed, clip_denoised=clip_denoised, batch_size=num,
    )
    check_compatible(model, classifier, options)
    unet = model.config
    assert isinstance(unet, UNetConfig) and model.diffusion is not None
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    noise, drawn, gens = initial_state(
        range(num), shape=shape, num_classes=num_label_classes(model, classifier), class_label=class_label, seed=seed,
        classes=classes,
    )
    if x_T is not None:
        if tuple(x_T.shape) != (num, *shape):
            raise GenerateError(f"x_T has shape {tuple(x_T.shape)}, expected {(num, *shape)}")
        noise = x_T.float().cpu()
    labels = labels if labels is not None else drawn
    model.model = backend.prepare(model.model)
    if classifier is not None:
        classifier.model = backend.prepare(classifier.model)
    x0 = sample_batch(
        model, noise, schedule=sampling_schedule(model, options), options=options,
        backend=backend, generators=gens, labels=labels, classifier=classifier,
        model_kwargs={"low_res": low_res} if low_res is not None else None,
    )
    return x0, labels
