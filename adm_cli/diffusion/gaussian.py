"""The Gaussian forward process q and the model's reverse process p (DDPM / IDDPM).

Glossary: x0 = x_0, x_t = x_t, x0_pred = x̂_0, eps_pred = ε̂, alpha_bar = ᾱ_t,
posterior_var = β̃_t, mean / var / log_var = μ_θ, Σ_θ, log Σ_θ of p(x_{t-1} | x_t),
v = α_t ε − σ_t x_0 with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) (the "velocity"; Salimans & Ho 2022).
`t` is always a batch of step indices into the schedule (not the network's timestep).
Coefficients come from the float64 tables and are cast to at least float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion.schedule import Schedule

__all__ = [
    "PMeanVar",
    "gather",
    "math_dtype",
    "p_mean_variance",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_x0",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "q_velocity",
    "q_posterior",
    "q_sample",
]


def math_dtype(x: Tensor) -> torch.dtype:
    """The dtype diffusion arithmetic runs in for `x`: at least float32 (half inputs are promoted)."""
    return torch.promote_types(x.dtype, torch.float32)


def gather(table: Tensor, t: Tensor, ndim: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """table[t] as a (B, 1, ..., 1) tensor of `ndim` dims in `dtype`, on t's device."""
    values = table.to(t.device)[t].to(dtype)
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _coef(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
    return gather(table, t, x.ndim, dtype=math_dtype(x))


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, *, schedule: Schedule) -> Tensor:
    """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) (DDPM Eq. 4)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    ab = schedule.alpha_bar
    return _coef(torch.sqrt(ab), t, x0) * x0 + _coef(torch.sqrt(1.0 - ab), t, x0) * noise


def q_posterior(x0: Tensor, x_t: Tensor, t: Tensor, *, schedule: Schedule) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM Eqs. 6-7).

    μ̃_t = β_t √ᾱ_{t-1} / (1 - ᾱ_t) · x_0 + (1 - ᾱ_{t-1}) √α_t / (1 - ᾱ_t) · x_t;
    β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t).
    """
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} differs from x_t shape {tuple(x_t.shape)}")
    mean = _coef(schedule.posterior_mean_coef1, t, x_t) * x0 + _coef(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = _coef(schedule.posterior_var, t, x_t).expand(x_t.shape)
    log_var = _coef(schedule.posterior_log_var_clipped, t, x_t).expand(x_t.shape)
    return mean, var, log_var


def predict_x0_from_eps(x_t: Tensor, t: Tensor, eps: Tensor, *, schedule: Schedule) -> Tensor:
    """x̂_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t (DDPM Eq. 4 solved for x_0; DDIM Eq. 9)."""
    ab = schedule.alpha_bar
    return _coef(torch.sqrt(1.0 / ab), t, x_t) * x_t - _coef(torch.sqrt(1.0 / ab - 1.0), t, x_t) * eps


def predict_eps_from_x0(x_t: Tensor, t: Tensor, x0: Tensor, *, schedule: Schedule) -> Tensor:
    """ε̂ = (x_t / √ᾱ_t - x̂_0) / √(1/ᾱ_t - 1), the inverse of `predict_x0_from_eps`."""
    ab = schedule.alpha_bar
    return (_coef(torch.sqrt(1.0 / ab), t, x_t) * x_t - x0) / _coef(torch.sqrt(1.0 / ab - 1.0), t, x_t)


def q_velocity(x0: Tensor, t: Tensor, noise: Tensor, *, schedule: Schedule) -> Tensor:
    """v = α_t ε − σ_t x_0, the v-prediction target for x_t = α_t x_0 + σ_t ε (Salimans & Ho 2022, Sec. 4)."""
    ab = schedule.alpha_bar
    return _coef(torch.sqrt(ab), t, x0) * noise - _coef(torch.sqrt(1.0 - ab), t, x0) * x0


def predict_x0_from_v(x_t: Tensor, t: Tensor, v: Tensor, *, schedule: Schedule) -> Tensor:
    """x̂_0 = α_t x_t − σ_t v̂ (Salimans & Ho 2022, Sec. 4 and App. D; α_t² + σ_t² = 1)."""
    ab = schedule.alpha_bar
    return _coef(torch.sqrt(ab), t, x_t) * x_t - _coef(torch.sqrt(1.0 - ab), t, x_t) * v


def predict_eps_from_v(x_t: Tensor, t: Tensor, v: Tensor, *, schedule: Schedule) -> Tensor:
    """ε̂ = σ_t x_t + α_t v̂ (Salimans & Ho 2022, App. D), the ε that `predict_x0_from_v`'s x̂_0 implies."""
    ab = schedule.alpha_bar
    return _coef(torch.sqrt(1.0 - ab), t, x_t) * x_t + _coef(torch.sqrt(ab), t, x_t) * v


def predict_x0(model_output: Tensor, x_t: Tensor, t: Tensor, *, schedule: Schedule, mean_type: str) -> Tensor:
    """x̂_0 from the network's mean channels, by what they predict: ε (DDIM Eq. 9), x_0 or v."""
    if mean_type == "epsilon":
        return predict_x0_from_eps(x_t, t, model_output, schedule=schedule)
    if mean_type == "x0":
        return model_output
    if mean_type == "v":
        return predict_x0_from_v(x_t, t, model_output, schedule=schedule)
    raise ValueError(f"unknown mean type {mean_type!r}")


class PMeanVar(NamedTuple):
    """p(x_{t-1} | x_t) = N(mean, var) with the predictions it came from; all shaped like x_t.

    `eps_pred` is re-derived from `x0_pred` after clipping, so x̂_0 and ε̂ always agree (DDIM and
    score guidance use this ε̂, as guided-diffusion does).
    """

    mean: Tensor
    var: Tensor
    log_var: Tensor
    x0_pred: Tensor
    eps_pred: Tensor


def p_mean_variance(
    model_output: Tensor,
    x_t: Tensor,
    t: Tensor,
    *,
    schedule: Schedule,
    config: DiffusionConfig,
    clip_denoised: bool = True,
    denoised_fn: Callable[[Tensor], Tensor] | None = None,
) -> PMeanVar:
    """Turn a network output at (x_t, t) into p(x_{t-1} | x_t) (DDPM Eq. 11; IDDPM Eq. 15).

    Mean: ε-, x_0- or v-prediction -> x̂_0 (then `denoised_fn`, then clip to [-1, 1]) -> μ̃_t(x̂_0, x_t).
    Variance, by `config.var_type`:
      fixed_small    Σ = β̃_t
      fixed_large    Σ = β_t, except β̃_1 at t = 0 (a better decoder likelihood; guided-diffusion)
      learned_range  log Σ = v log β_t + (1 - v) log β̃_t with v = (out + 1) / 2 (IDDPM Eq. 15)
      learned        log Σ = out
    With a learned variance, model_output has 2C channels: [mean part, variance part].
    """
    batch, channels = x_t.shape[:2]
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    spatial = tuple(x_t.shape[2:])
    if config.learned_variance:
        if model_output.shape != (batch, 2 * channels, *spatial):
            raise ValueError(
                f"learned variance needs model output {(batch, 2 * channels, *spatial)}, "
                f"got {tuple(model_output.shape)}"
            )
        model_output, var_values = torch.split(model_output, channels, dim=1)  # 2 x (B, C, ...)
        if config.var_type == "learned":
            log_var = var_values
        else:
            min_log = _coef(schedule.posterior_log_var_clipped, t, x_t)
            max_log = _coef(torch.log(schedule.betas), t, x_t)
            frac = (var_values + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        var = torch.exp(log_var)
    else:
        if model_output.shape != x_t.shape:
            raise ValueError(f"model output {tuple(model_output.shape)} must match x_t {tuple(x_t.shape)}")
        if config.var_type == "fixed_small":
            var_table, log_var_table = schedule.posterior_var, schedule.posterior_log_var_clipped
        elif config.var_type == "fixed_large":
            first = schedule.posterior_var[1:2] if schedule.num_steps > 1 else schedule.betas[:1]
            var_table = torch.cat([first, schedule.betas[1:]])
            log_var_table = torch.log(var_table)
        else:
            raise ValueError(f"unknown variance type {config.var_type!r}")
        var = _coef(var_table, t, x_t).expand(x_t.shape)
        log_var = _coef(log_var_table, t, x_t).expand(x_t.shape)

    x0_pred = predict_x0(model_output, x_t, t, schedule=schedule, mean_type=config.mean_type)
    if denoised_fn is not None:
        x0_pred = denoised_fn(x0_pred)
    if clip_denoised:
        x0_pred = x0_pred.clamp(-1, 1)
    mean, _, _ = q_posterior(x0_pred, x_t, t, schedule=schedule)
    eps_pred = predict_eps_from_x0(x_t, t, x0_pred, schedule=schedule)
    return PMeanVar(mean=mean, var=var, log_var=log_var, x0_pred=x0_pred, eps_pred=eps_pred)
