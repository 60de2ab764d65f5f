"""From a loaded model (and classifier) to x_0: compatibility checks, the schedule, the seeded initial
state, the one `build_denoiser`, and `run_sampler` over the named samplers."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

from adm_cli.backend import Backend, image_generators
from adm_cli.checkpoint import Loaded
from adm_cli.config import ClassifierConfig, UNetConfig
from adm_cli.diffusion import (
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
)
from adm_cli.generate.options import ODE_SOLVERS, SAMPLERS, ClassMode, GenerateError, SampleOptions


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
        _check_same_noise(model, classifier)
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
    if options.classes == "balanced":
        if n_classes is None:
            raise GenerateError("--classes balanced needs a class-conditional model or a classifier")
        check_balanced_num(options.num, n_classes)
    assert model.diffusion is not None
    sampling_schedule(model, options)


def _check_same_noise(model: Loaded, classifier: Loaded) -> None:
    """A noise-aware classifier guides with the gradient at the noise level it learned for each t:
    on another schedule (or T) those levels are wrong and guidance silently degrades."""
    ours, theirs = model.diffusion, classifier.diffusion
    if ours is None or theirs is None:  # OpenAI's bare state dicts say nothing: trust the user
        return
    if (theirs.schedule, theirs.steps) != (ours.schedule, ours.steps):
        raise GenerateError(
            f"the classifier was trained on the {theirs.schedule} {theirs.steps}-step noise schedule, the model uses "
            f"{ours.schedule} {ours.steps}; train the classifier with --diffusion {model.path}"
        )


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


def check_balanced_num(num: int, num_classes: int) -> None:
    """`--classes balanced` gives each of the K classes num/K images: refuse another `num`, naming
    the nearest multiples of K."""
    if num % num_classes:
        below = num - num % num_classes
        nearest = " or ".join(f"--num {n}" for n in (below, below + num_classes) if n > 0)
        raise GenerateError(
            f"--classes balanced needs --num divisible by the {num_classes} classes, got {num}; use {nearest}"
        )


def num_label_classes(model: Loaded, classifier: Loaded | None) -> int | None:
    if isinstance(model.config, UNetConfig) and model.config.num_classes is not None:
        return model.config.num_classes
    if classifier is not None:
        return classifier.config.num_classes  # type: ignore[union-attr]
    return None


def balanced_block_seed(seed: int, block: int) -> int:
    """The seed of block `block`'s class permutation under run seed `seed`: a SHA-256 of both, so it
    shares no generator stream with the per-image seeds `seed + i`."""
    digest = hashlib.sha256(f"adm balanced classes {seed} {block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a 63-bit torch seed


def balanced_labels(indices: range, *, num_classes: int, seed: int) -> torch.Tensor:
    """Labels of images `indices` under `--classes balanced`: image i takes place i mod K of a
    permutation of the K classes drawn for its block i // K (`balanced_block_seed`).

    Every block of K consecutive images holds each class once, so N = m·K images hold exactly m of
    each (and so does every prefix of m·K images). Label i depends on (seed, K, i) alone: not on the
    batch size, a resumption or torchrun's split, and a shorter run is the prefix of a longer one, as
    with random classes.
    """
    k = num_classes
    perms = {
        b: torch.randperm(k, generator=torch.Generator().manual_seed(balanced_block_seed(seed, b)))
        for b in sorted({i // k for i in indices})
    }
    return torch.tensor([int(perms[i // k][i % k]) for i in indices], dtype=torch.int64)


def initial_state(
    indices: range,
    *,
    shape: tuple[int, int, int],
    num_classes: int | None,
    class_label: int | None,
    seed: int,
    classes: ClassMode = "random",
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Generator]]:
    """Per image i: a generator seeded `seed + i`, then its label (if random), then x_T ~ N(0, I).

    A fixed `class_label` or `classes="balanced"` (`balanced_labels`) draws nothing from the image
    generators, so image i's x_T is the same for every given label. Generators live on the CPU so
    the same seed gives the same x_T on every device.
    """
    gens = image_generators([seed + i for i in indices])
    labels = None
    if num_classes is not None:
        if class_label is not None:
            labels = torch.full((len(gens),), class_label, dtype=torch.int64)
        elif classes == "balanced":
            labels = balanced_labels(indices, num_classes=num_classes, seed=seed)
        else:
            labels = torch.stack([torch.randint(num_classes, (), generator=g) for g in gens])
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
        # the data-prediction solvers correct the guided x̂_0, as their authors' code does
        correct_guided_x0=options.sampler in ODE_SOLVERS,
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
