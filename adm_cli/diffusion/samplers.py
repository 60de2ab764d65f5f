"""Samplers: ancestral DDPM, DDIM, and DDIM inversion (DDPM Alg. 2; DDIM Eq. 12; ADM Algs. 1-2).

Glossary: x_t = the current sample, t = step indices (B,) into the schedule, model_t = what the
network sees (`model_timesteps`), out = p(x_{t-1} | x_t) from `p_mean_variance`, eta = η.

Step functions are pure and share the signature `(out, x_t, t, noise, ...)`; each loop is one
function `(denoise, x_T, *, generators, callback, progress) -> x_0` that calls the guided
`Denoiser` (which owns the network, the schedule, clipping and guidance) and its step. Hooks:
  callback(i, t, x, out)  after iteration i (0-based) at step indices t, with the new sample x
                          and out (holding x̂_0 as out.x0_pred)
  progress(done, total)   after every step, for a progress bar
Noise is drawn per image from its own generator, so image i depends only on generator i and
not on the batch it was sampled in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import torch
from torch import Tensor

from adm_cli.diffusion.denoiser import Denoiser
from adm_cli.diffusion.gaussian import PMeanVar, gather, math_dtype, q_sample
from adm_cli.diffusion.schedule import Schedule

__all__ = [
    "check_score_guidance",
    "ddim_invert",
    "ddim_reverse_step",
    "ddim_sigma",
    "ddim_step",
    "ddpm_step",
    "per_image_noise",
    "sample_ddim",
    "sample_ddpm",
    "step_indices",
]

Callback = Callable[[int, Tensor, Tensor, PMeanVar], None]
Progress = Callable[[int, int], None]
Generators = torch.Generator | Sequence[torch.Generator]


def per_image_noise(x: Tensor, generators: Generators) -> Tensor:
    """Standard normal noise shaped like x, image i drawn from generators[i].

    Drawn in float32 on each generator's device, then moved to x's device and dtype, so CPU
    generators give the same noise whatever device samples. A single generator draws the
    whole batch at once (then images depend on the batch).
    """
    if isinstance(generators, torch.Generator):
        return torch.randn(x.shape, generator=generators, device=generators.device).to(x)
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per image: {len(generators)} generators for {x.shape[0]} images")
    noise = [torch.randn(x.shape[1:], generator=g, device=g.device) for g in generators]
    return torch.stack(noise).to(x)  # (B, C, H, W)


def _nonzero_mask(t: Tensor, x: Tensor) -> Tensor:
    """1 where t > 0, else 0, shaped (B, 1, ..., 1): no noise is added at the last step."""
    return (t != 0).to(math_dtype(x)).reshape(-1, *([1] * (x.ndim - 1)))


def ddim_sigma(schedule: Schedule, eta: float) -> Tensor:
    """σ_t(η) = η √((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t-1}) (DDIM Eq. 16), float64 table.

    η = 1 gives σ_t² = β̃_t, DDPM's posterior variance; η = 0 the deterministic DDIM.
    """
    ab, ab_prev = schedule.alpha_bar, schedule.alpha_bar_prev
    return eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)


def ddpm_step(out: PMeanVar, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Ancestral step x_{t-1} = μ_θ + [t > 0] · exp(½ log Σ_θ) · z (DDPM Alg. 2, line 4)."""
    return out.mean + _nonzero_mask(t, x_t) * torch.exp(0.5 * out.log_var) * noise


def ddim_step(out: PMeanVar, x_t: Tensor, t: Tensor, noise: Tensor | None, *, schedule: Schedule, eta: float) -> Tensor:
    """DDIM update (DDIM Eq. 12).

    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z, σ_t from `ddim_sigma`.
    `noise` may be None when η = 0.
    """
    sigma = ddim_sigma(schedule, eta)
    dtype = math_dtype(x_t)
    sqrt_ab_prev = gather(torch.sqrt(schedule.alpha_bar_prev), t, x_t.ndim, dtype=dtype)
    direction = gather(torch.sqrt((1 - schedule.alpha_bar_prev - sigma**2).clamp(min=0)), t, x_t.ndim, dtype=dtype)
    x_prev = sqrt_ab_prev * out.x0_pred + direction * out.eps_pred
    if eta == 0:
        return x_prev
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs noise")
    return x_prev + _nonzero_mask(t, x_t) * gather(sigma, t, x_t.ndim, dtype=dtype) * noise


def ddim_reverse_step(out: PMeanVar, x_t: Tensor, t: Tensor, *, schedule: Schedule) -> Tensor:
    """Deterministic DDIM step forward in time, x_t -> x_{t+1} (DDIM Eq. 12 with η = 0, reversed).

    x_{t+1} = √ᾱ_{t+1} x̂_0 + √(1 - ᾱ_{t+1}) ε̂, both predicted at (x_t, t). At the last step
    ᾱ_{t+1} is 0, as in guided-diffusion's ddim_reverse_sample.
    """
    ab_next = schedule.alpha_bar_next
    dtype = math_dtype(x_t)
    sqrt_ab_next = gather(torch.sqrt(ab_next), t, x_t.ndim, dtype=dtype)
    sqrt_one_minus_ab_next = gather(torch.sqrt(1 - ab_next), t, x_t.ndim, dtype=dtype)
    return sqrt_ab_next * out.x0_pred + sqrt_one_minus_ab_next * out.eps_pred


def step_indices(x: Tensor, i: int) -> Tensor:
    """Step index i for every image of x, shape (B,)."""
    return torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)


def check_score_guidance(denoise: Denoiser, sampler: str) -> None:
    """Refuse a mean-shift classifier guidance where the sampler reads only x̂_0 and ε̂."""
    if denoise.guidance.uses_classifier and denoise.guidance.classifier_mode != "score":
        raise ValueError(f"{sampler} supports only score guidance (ADM Alg. 2); a mean shift would be ignored")


def sample_ddpm(
    denoise: Denoiser,
    x_T: Tensor,
    *,
    generators: Generators,
    callback: Callback | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """Ancestral sampling from x_T over every step of the denoiser's schedule (DDPM Alg. 2).

    Uses the mean and (learned) variance of p(x_{t-1} | x_t); classifier guidance as a mean
    shift (ADM Alg. 1, guided-diffusion's default here) or a score shift (ADM Alg. 2).
    """
    x, total = x_T, denoise.schedule.num_steps
    with torch.no_grad():
        for i, step in enumerate(reversed(range(total))):
            t = step_indices(x, step)
            out = denoise(x, t)
            # Noise is drawn at t = 0 too (and masked), so every step consumes the same stream.
            x = ddpm_step(out, x, t, per_image_noise(x, generators))
            if callback is not None:
                callback(i, t, x, out)
            if progress is not None:
                progress(i + 1, total)
    return x


def sample_ddim(
    denoise: Denoiser,
    x_T: Tensor,
    *,
    generators: Generators | None = None,
    eta: float = 0.0,
    callback: Callback | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """DDIM sampling from x_T over every step of the denoiser's schedule (DDIM Eq. 12; ADM Alg. 2).

    η = 0 is deterministic (first-order in the probability-flow ODE) and needs no generators.
    DDIM reads x̂_0 and ε̂ only, so classifier guidance must be a score shift.
    """
    check_score_guidance(denoise, "DDIM")
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    if eta > 0 and generators is None:
        raise ValueError("sample_ddim with eta > 0 needs generators")
    schedule = denoise.schedule
    x, total = x_T, schedule.num_steps
    with torch.no_grad():
        for i, step in enumerate(reversed(range(total))):
            t = step_indices(x, step)
            out = denoise(x, t)
            noise = per_image_noise(x, generators) if eta > 0 else None  # type: ignore[arg-type]
            x = ddim_step(out, x, t, noise, schedule=schedule, eta=eta)
            if callback is not None:
                callback(i, t, x, out)
            if progress is not None:
                progress(i + 1, total)
    return x


def ddim_invert(
    denoise: Denoiser,
    x0: Tensor,
    *,
    callback: Callback | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """Encode x_0 to the x_T that `sample_ddim` (η = 0) decodes back to it (DDIM Sec. 4.3, Eq. 14).

    Runs the η = 0 ODE forward through the levels 1 -> ᾱ_0 -> ᾱ_1 -> ... -> ᾱ_{T-1}, i.e. exactly
    the levels sample_ddim visits, in reverse. The first move, from the clean x_0, uses x̂_0 = x_0
    and ε̂ from the network at step 0; the others are `ddim_reverse_step` at steps 0 .. T-2.
    ε̂ is taken at the known point, so reconstruction is exact only in the small-step limit.
    Decode with the same denoiser.
    """
    schedule = denoise.schedule
    x, total = x0, schedule.num_steps
    with torch.no_grad():
        for i in range(total):
            # Move i goes from level ᾱ_{i-1} to ᾱ_i; level ᾱ_{-1} = 1 is the clean image.
            t = step_indices(x, max(i - 1, 0))
            out = denoise(x, t)
            if i == 0:  # x̂_0 is x_0 itself: diffuse it with the predicted noise
                x = q_sample(x0, t, out.eps_pred.to(x0.dtype), schedule=schedule)
            else:
                x = ddim_reverse_step(out, x, t, schedule=schedule)
            if callback is not None:
                callback(i, t, x, out)
            if progress is not None:
                progress(i + 1, total)
    return x
