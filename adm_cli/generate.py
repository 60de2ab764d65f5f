"""Batched, seeded, resumable generation into a sample file.

Image i is drawn from its own generator seeded with `seed + i`: its class (when random), its
x_T and every step's noise come from that generator alone, so a sample does not depend on the
batch size, on where a killed run stopped, or on how torchrun split the work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from adm_cli import __version__
from adm_cli.backend import Backend, Dist, image_generators
from adm_cli.checkpoint import Loaded, file_digest
from adm_cli.config import ClassifierConfig, UNetConfig
from adm_cli.data.images import save_grid, to_uint8
from adm_cli.data.samples import SampleWriter, open_sample_writer, read_samples
from adm_cli.diffusion import (
    Schedule,
    classifier_grad,
    make_schedule,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from adm_cli.reporting import SILENT, Reporter

Sampler = Literal["ddpm", "ddim"]


class GenerateError(ValueError):
    """Options that do not fit the model (one-line message)."""


@dataclass(frozen=True)
class SampleOptions:
    """What to sample; everything that changes the images is part of the resume fingerprint."""

    num: int
    sampler: Sampler = "ddpm"
    respacing: str | None = None  # "250", "ddim25", "90,60,60,20,20"; None: every step
    eta: float = 0.0
    guidance_scale: float = 0.0
    class_label: int | None = None  # None: random per image (class-conditional or guided models)
    seed: int = 0
    clip_denoised: bool = True
    batch_size: int = 16  # does not change the images

    def __post_init__(self) -> None:
        if self.num <= 0:
            raise GenerateError(f"--num must be positive, got {self.num}")
        if self.batch_size <= 0:
            raise GenerateError(f"--batch-size must be positive, got {self.batch_size}")
        if self.eta < 0:
            raise GenerateError(f"--eta must be >= 0, got {self.eta}")
        if self.sampler == "ddpm" and self.eta != 0:
            raise GenerateError("--eta applies to DDIM only (use --ddim K)")
        if self.seed < 0:
            raise GenerateError(f"--seed must be >= 0, got {self.seed}")


def check_compatible(model: Loaded, classifier: Loaded | None, options: SampleOptions) -> None:
    """Refuse combinations that cannot work, with one line naming the mismatch."""
    unet = model.config
    assert isinstance(unet, UNetConfig)
    n_classes = unet.num_classes
    if classifier is not None:
        clf = classifier.config
        assert isinstance(clf, ClassifierConfig)
        if clf.image_size != unet.image_size:
            raise GenerateError(
                f"classifier is for {clf.image_size}x{clf.image_size} images, the model makes {unet.image_size}x{unet.image_size}"
            )
        if clf.in_channels != unet.in_channels:
            raise GenerateError(f"classifier takes {clf.in_channels} channels, the model makes {unet.in_channels}")
        if n_classes is not None and clf.num_classes != n_classes:
            raise GenerateError(f"classifier has {clf.num_classes} classes, the model {n_classes}")
        n_classes = clf.num_classes
    elif options.guidance_scale != 0:
        raise GenerateError("--guidance needs --classifier CKPT")
    if options.class_label is not None:
        if n_classes is None:
            raise GenerateError("--class needs a class-conditional model or a classifier")
        if not 0 <= options.class_label < n_classes:
            raise GenerateError(f"--class {options.class_label} is out of range [0, {n_classes - 1}]")
    assert model.diffusion is not None
    try:
        make_schedule(model.diffusion, options.respacing)
    except ValueError as e:
        raise GenerateError(f"--respacing {options.respacing!r}: {e}") from None


def ddim_spacing(k: int, steps: int) -> str:
    """`ddimK` (a constant stride from t = 0, as guided-diffusion's DDIM runs use) when some
    stride gives exactly K steps, else K evenly spaced steps."""
    try:
        space_timesteps(steps, f"ddim{k}")
        return f"ddim{k}"
    except ValueError:
        return str(k)


def num_label_classes(model: Loaded, classifier: Loaded | None) -> int | None:
    if isinstance(model.config, UNetConfig) and model.config.num_classes is not None:
        return model.config.num_classes
    if classifier is not None:
        return classifier.config.num_classes  # type: ignore[union-attr]
    return None


def initial_state(
    indices: range, *, shape: tuple[int, int, int], num_classes: int | None, class_label: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Generator]]:
    """Per image i: a generator seeded `seed + i`, then its label (if random), then x_T ~ N(0, I).

    Generators live on the CPU so the same seed gives the same x_T on every device.
    """
    gens = image_generators([seed + i for i in indices])
    labels = None
    if num_classes is not None:
        if class_label is None:
            labels = torch.stack([torch.randint(num_classes, (), generator=g) for g in gens])
        else:
            labels = torch.full((len(gens),), class_label, dtype=torch.int64)
    x_T = torch.stack([torch.randn(shape, generator=g) for g in gens])  # (B, C, H, W)
    return x_T, labels, gens


def network_fn(
    model: Loaded,
    backend: Backend,
    *,
    labels: torch.Tensor | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The sampler's `model_fn(x_t, model_t)`: the network in the backend's precision, closed over
    the class labels (used by class-conditional models only) and extra inputs such as `low_res`."""
    assert isinstance(model.config, UNetConfig)
    device = backend.device
    net = model.model
    y = labels.to(device) if labels is not None and model.config.num_classes is not None else None
    kwargs = {k: v.to(device) for k, v in (model_kwargs or {}).items()}
    memory_format = torch.channels_last if backend.channels_last else torch.contiguous_format

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with backend.autocast():
            out = net(x.contiguous(memory_format=memory_format), t, y=y, **kwargs)
        return out.float()

    return model_fn


def sample_batch(
    model: Loaded,
    x_T: torch.Tensor,
    *,
    schedule: Schedule,
    options: SampleOptions,
    backend: Backend,
    generators: list[torch.Generator],
    labels: torch.Tensor | None = None,
    classifier: Loaded | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run one sampler over a batch; returns x_0 in [-1, 1] (float32, on the CPU)."""
    assert model.diffusion is not None and isinstance(model.config, UNetConfig)
    device = backend.device
    y = labels.to(device) if labels is not None else None
    model_fn = network_fn(model, backend, labels=labels, model_kwargs=model_kwargs)
    cond_fn = None
    if classifier is not None and options.guidance_scale != 0:
        assert y is not None
        clf = classifier.model

        def classifier_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with backend.autocast():
                return clf(x, t).float()

        def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return classifier_grad(classifier_fn, x, t, y, options.guidance_scale)

    common: dict[str, Any] = dict(
        schedule=schedule,
        config=model.diffusion,
        generators=generators,
        clip_denoised=options.clip_denoised,
        cond_fn=cond_fn,
        progress=progress,
    )
    with torch.no_grad():
        if options.sampler == "ddim":
            x0 = sample_ddim(model_fn, x_T.to(device), eta=options.eta, **common)
        else:
            x0 = sample_ddpm(model_fn, x_T.to(device), **common)
    return x0.float().cpu()


def fingerprint(model: Loaded, classifier: Loaded | None, options: SampleOptions, backend: Backend, extra: dict | None = None) -> str:
    """What must not change between a killed run and its resumption."""
    fields = dataclasses.asdict(options)
    fields.pop("batch_size")
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
    schedule = make_schedule(model.diffusion, options.respacing).to(backend.device)
    num_classes = num_label_classes(model, classifier)
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    model.model = backend.prepare(model.model)
    if classifier is not None:
        classifier.model = backend.prepare(classifier.model)

    summary = (
        f"{model.kind} model ({model.preset or model.source}, {model.num_parameters / 1e6:.1f}M parameters) on "
        f"{backend.device} in {backend.precision}; {options.sampler} {options.respacing or 'all steps'}"
        + (f", guidance {options.guidance_scale}" if classifier is not None else "")
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
        indices, shape=shape, num_classes=num_classes, class_label=options.class_label, seed=options.seed
    )
    x0 = sample_batch(
        model, x_T, schedule=schedule, options=options, backend=backend, generators=gens,
        labels=labels, classifier=classifier, progress=progress,
    )
    return to_uint8(x0), None if labels is None else labels.numpy()


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


def sample_images(
    model: Loaded,
    num: int,
    *,
    sampler: Sampler = "ddpm",
    respacing: str | None = None,
    eta: float = 0.0,
    classifier: Loaded | None = None,
    guidance_scale: float = 0.0,
    class_label: int | None = None,
    seed: int = 0,
    x_T: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    low_res: torch.Tensor | None = None,
    backend: Backend | None = None,
    clip_denoised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample `num` images in memory (one batch): returns (x_0 in [-1, 1] NCHW float32, labels).

    `x_T` (num, C, H, W) replaces the seeded initial noise; per-step noise still comes from
    the per-image generators seeded `seed + i`. `labels` replaces the drawn classes.
    """
    from adm_cli.backend import make_backend

    backend = backend or make_backend("cpu", "fp32")
    options = SampleOptions(
        num=num, sampler=sampler, respacing=respacing, eta=eta, guidance_scale=guidance_scale,
        class_label=class_label, seed=seed, clip_denoised=clip_denoised, batch_size=num,
    )
    check_compatible(model, classifier, options)
    unet = model.config
    assert isinstance(unet, UNetConfig) and model.diffusion is not None
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    noise, drawn, gens = initial_state(
        range(num), shape=shape, num_classes=num_label_classes(model, classifier), class_label=class_label, seed=seed
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
        model, noise, schedule=make_schedule(model.diffusion, respacing).to(backend.device), options=options,
        backend=backend, generators=gens, labels=labels, classifier=classifier,
        model_kwargs={"low_res": low_res} if low_res is not None else None,
    )
    return x0, labels
