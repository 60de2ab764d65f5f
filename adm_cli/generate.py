"""Batched, seeded, resumable generation into a sample file.

Image i is drawn from its own generator seeded with `seed + i`: its class (when random), its
x_T and every step's noise come from that generator alone, so a sample does not depend on the
batch size, on where a killed run stopped, or on how torchrun split the work.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    SPACINGS,
    Denoiser,
    Guidance,
    Schedule,
    classifier_gradient,
    make_schedule,
    respace,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp,
    sample_heun,
    sample_unipc,
    solver_timesteps,
    space_timesteps,
)
from adm_cli.reporting import SILENT, Reporter

Sampler = Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc", "heun"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc", "heun")
ODE_SOLVERS = ("dpm++2m", "dpm++3m", "unipc", "heun")  # deterministic: no --eta
MIN_NFE = {"ddpm": 1, "ddim": 1, "dpm++2m": 2, "dpm++3m": 3, "unipc": 2, "heun": 3}
DEFAULT_SOLVER_NFE = 20


class GenerateError(ValueError):
    """Options that do not fit the model (one-line message)."""


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Schedule steps that cost at most `nfe` network evaluations (Heun: 2K - 1 for K steps)."""
    if sampler not in SAMPLERS:
        raise GenerateError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if nfe < MIN_NFE[sampler]:
        raise GenerateError(f"--nfe {nfe} is too small for {sampler}: it needs at least {MIN_NFE[sampler]}")
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations per image for `steps` schedule steps (a CFG evaluation is one doubled batch)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def default_spacing(sampler: str, guided: bool) -> str | None:
    """The step choice the solvers' authors recommend: EDM's ρ = 7 σ steps for Heun; for
    DPM-Solver++ and UniPC uniform time under guidance (their guided-sampling recipe) and uniform
    log-SNR without (their recommendation for unguided pixel models); None (guided-diffusion's
    respacing) for DDPM and DDIM."""
    if sampler == "heun":
        return "karras"
    if sampler in ODE_SOLVERS:
        return "time-uniform" if guided else "logsnr"
    return None


@dataclass(frozen=True)
class SampleOptions:
    """What to sample; everything that changes the images is part of the resume fingerprint."""

    num: int
    sampler: Sampler = "ddpm"
    respacing: str | None = None  # "250", "ddim25", "90,60,60,20,20"; with `spacing`: the step count; None: every step
    spacing: str | None = None  # time-uniform | logsnr | karras (solver step choice), or None
    eta: float = 0.0
    guidance_scale: float = 0.0  # classifier guidance s
    cfg_scale: float = 0.0  # classifier-free guidance w (diffusers' guidance_scale = 1 + w)
    guidance_interval: tuple[float, float] | None = None  # original timesteps where guidance acts
    dynamic_threshold: float | None = None  # quantile ratio (0.995) of DPM-Solver++'s thresholding
    class_label: int | None = None  # None: random per image (class-conditional or guided models)
    seed: int = 0
    clip_denoised: bool = True
    batch_size: int = 16  # does not change the images

    def __post_init__(self) -> None:
        if self.num <= 0:
            raise GenerateError(f"--num must be positive, got {self.num}")
        if self.batch_size <= 0:
            raise GenerateError(f"--batch-size must be positive, got {self.batch_size}")
        if self.sampler not in SAMPLERS:
            raise GenerateError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        for name, value in (("--eta", self.eta), ("--guidance", self.guidance_scale), ("--cfg-scale", self.cfg_scale)):
            if not math.isfinite(value):
                raise GenerateError(f"{name} must be a finite number, got {value}")
        if self.eta < 0:
            raise GenerateError(f"--eta must be >= 0, got {self.eta}")
        if self.eta != 0 and self.sampler != "ddim":
            raise GenerateError(f"--eta applies to DDIM only; {self.sampler} is {'ancestral' if self.sampler == 'ddpm' else 'deterministic'}")
        if self.spacing is not None:
            if self.spacing not in SPACINGS:
                raise GenerateError(f"unknown spacing {self.spacing!r}; expected one of {', '.join(SPACINGS)}")
            if self.respacing is None or not self.respacing.isdigit():
                raise GenerateError(f"--spacing {self.spacing} needs a step count (--steps or --nfe), not --respacing")
        if self.dynamic_threshold is not None:
            if not 0 < self.dynamic_threshold <= 1:
                raise GenerateError(f"the dynamic-threshold ratio must lie in (0, 1], got {self.dynamic_threshold}")
            if not self.clip_denoised:
                raise GenerateError("--dynamic-threshold replaces clipping; drop --no-clip")
        if self.guidance_interval is not None and not self.guidance_interval[0] <= self.guidance_interval[1]:
            raise GenerateError(f"--guidance-interval needs LO <= HI, got {self.guidance_interval}")
        if self.seed < 0:
            raise GenerateError(f"--seed must be >= 0, got {self.seed}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 0 or self.cfg_scale != 0


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
    if options.cfg_scale != 0 and not unet.null_class:
        raise GenerateError(
            "--cfg-scale needs a model with a null class (trained with --label-dropout); this one has none"
        )
    if options.class_label is not None:
        if n_classes is None:
            raise GenerateError("--class needs a class-conditional model or a classifier")
        if not 0 <= options.class_label < n_classes:
            raise GenerateError(f"--class {options.class_label} is out of range [0, {n_classes - 1}]")
    assert model.diffusion is not None
    sampling_schedule(model, options)


def sampling_schedule(model: Loaded, options: SampleOptions) -> Schedule:
    """The (respaced) schedule the sampler runs: guided-diffusion's respacing spec, or a step count
    placed by `options.spacing` (`solver_timesteps`)."""
    assert model.diffusion is not None
    try:
        if options.spacing is None:
            return make_schedule(model.diffusion, options.respacing)
        base = make_schedule(model.diffusion)
        return respace(base, solver_timesteps(base, int(options.respacing or 0), options.spacing))  # type: ignore[arg-type]
    except ValueError as e:
        what = f"--spacing {options.spacing} with {options.respacing} steps" if options.spacing else f"--respacing {options.respacing!r}"
        raise GenerateError(f"{what}: {e}") from None


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
    model: Loaded, backend: Backend, *, model_kwargs: dict[str, torch.Tensor] | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The denoiser's `model_fn(x_t, model_t, y)`: the network in the backend's precision, with extra
    per-image inputs such as `low_res` (repeated when classifier-free guidance doubles the batch).
    Labels reach class-conditional models only."""
    assert isinstance(model.config, UNetConfig)
    device = backend.device
    net = model.model
    conditional = model.config.num_classes is not None
    kwargs = {k: v.to(device) for k, v in (model_kwargs or {}).items()}
    memory_format = torch.channels_last if backend.channels_last else torch.contiguous_format

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        extra = {k: v if len(v) == len(x) else torch.cat([v] * (len(x) // len(v))) for k, v in kwargs.items()}
        with backend.autocast():
            out = net(x.contiguous(memory_format=memory_format), t, y=y if conditional else None, **extra)
        return out.float()

    return model_fn


def build_denoiser(
    model: Loaded,
    *,
    schedule: Schedule,
    options: SampleOptions,
    backend: Backend,
    labels: torch.Tensor | None = None,
    classifier: Loaded | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
) -> Denoiser:
    """The one place a network, its classifier, labels and guidance options become a `Denoiser`
    (adm sample, upsample, interpolate and the Python API)."""
    assert model.diffusion is not None and isinstance(model.config, UNetConfig)
    device = backend.device
    y = labels.to(device) if labels is not None else None
    grad_fn = None
    if classifier is not None and options.guidance_scale != 0:
        clf = classifier.model

        def classifier_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with backend.autocast():
                return clf(x, t).float()

        grad_fn = classifier_gradient(classifier_fn)

    guidance = Guidance(
        classifier_scale=options.guidance_scale if grad_fn is not None else 0.0,
        # guided-diffusion shifts the mean for ancestral sampling (ADM Alg. 1), the score otherwise (Alg. 2)
        classifier_mode="mean" if options.sampler == "ddpm" else "score",
        cfg_scale=options.cfg_scale,
        interval=options.guidance_interval,
    )
    return Denoiser(
        network_fn(model, backend, model_kwargs=model_kwargs),
        schedule=schedule.to(device),
        config=model.diffusion,
        labels=y,
        guidance=guidance,
        grad_fn=grad_fn,
        null_label=model.config.num_classes if model.config.null_class else None,
        clip_denoised=options.clip_denoised,
        threshold=options.dynamic_threshold,
    )


def run_sampler(
    sampler: str,
    denoise: Denoiser,
    x_T: torch.Tensor,
    *,
    generators: list[torch.Generator] | None = None,
    eta: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """x_0 from x_T with the named sampler over the denoiser's schedule."""
    if sampler == "ddpm":
        assert generators is not None
        return sample_ddpm(denoise, x_T, generators=generators, progress=progress)
    if sampler == "ddim":
        return sample_ddim(denoise, x_T, generators=generators, eta=eta, progress=progress)
    if sampler in ("dpm++2m", "dpm++3m"):
        return sample_dpmpp(denoise, x_T, order=int(sampler[-2]), progress=progress)
    if sampler == "unipc":
        return sample_unipc(denoise, x_T, order=2, progress=progress)
    if sampler == "heun":
        return sample_heun(denoise, x_T, progress=progress)
    raise GenerateError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")


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
    denoise = build_denoiser(
        model, schedule=schedule, options=options, backend=backend, labels=labels, classifier=classifier,
        model_kwargs=model_kwargs,
    )
    x0 = run_sampler(options.sampler, denoise, x_T.to(backend.device), generators=generators, eta=options.eta,
                     progress=progress)
    return x0.float().cpu()


def describe_steps(options: SampleOptions, schedule: Schedule) -> str:
    """e.g. 'dpm++2m, 20 steps (logsnr), 20 network evaluations per image'."""
    how = f" ({options.spacing})" if options.spacing else (f" ({options.respacing})" if options.respacing else "")
    text = f"{options.sampler}, {schedule.num_steps} steps{how}, {nfe_of(options.sampler, schedule.num_steps)} network evaluations per image"
    if options.cfg_scale:
        text += " (each one forward of a doubled batch)"
    return text


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
        + (f", classifier-free guidance {options.cfg_scale}" if options.cfg_scale else "")
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
    spacing: str | None = None,
    eta: float = 0.0,
    classifier: Loaded | None = None,
    guidance_scale: float = 0.0,
    cfg_scale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    dynamic_threshold: float | None = None,
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
    `respacing` is a guided-diffusion spec, or with `spacing` (time-uniform, logsnr, karras) a
    step count; `cfg_scale` is classifier-free guidance w (models with a null class).
    """
    from adm_cli.backend import make_backend

    backend = backend or make_backend("cpu", "fp32")
    options = SampleOptions(
        num=num, sampler=sampler, respacing=respacing, spacing=spacing, eta=eta, guidance_scale=guidance_scale,
        cfg_scale=cfg_scale, guidance_interval=guidance_interval, dynamic_threshold=dynamic_threshold,
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
        model, noise, schedule=sampling_schedule(model, options), options=options,
        backend=backend, generators=gens, labels=labels, classifier=classifier,
        model_kwargs={"low_res": low_res} if low_res is not None else None,
    )
    return x0, labels
