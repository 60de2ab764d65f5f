"""Likelihood terms of the variational bound, in bits per dimension (DDPM Eq. 5; IDDPM Sec. 2).

Glossary: x0 = x_0 (data scaled to [-1, 1]), out = p(x_{t-1} | x_t) from `p_mean_variance`,
L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), L_0 = -log p(x_0 | x_1) (discretised decoder).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from adm_cli.diffusion.gaussian import PMeanVar, gather, math_dtype, q_posterior
from adm_cli.diffusion.schedule import Schedule

__all__ = [
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "vlb_terms",
]

_LN2 = math.log(2.0)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasting)."""
    ref = next((v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (v if isinstance(v, Tensor) else torch.tensor(v).to(ref) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the approximation DDPM's decoder uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(x) of 8-bit data under N(means, e^{2 log_scales}) binned to width 2/255 (DDPM Eq. 13).

    The edge bins at -1 and 1 extend to -∞ and +∞. Returns nats, shaped like x.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError("x, means and log_scales must have one shape")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vlb_terms(out: PMeanVar, x0: Tensor, x_t: Tensor, t: Tensor, *, schedule: Schedule) -> Tensor:
    """One term of the variational bound per image, in bits/dim (DDPM Eq. 5; IDDPM Eq. 4-5).

    L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, L_0 = -log p(x_0 | x_1) at t = 0.
    `out` is `p_mean_variance` at (x_t, t); training passes clip_denoised=False. Returns (B,).
    """
    true_mean, _, true_log_var = q_posterior(x0, x_t, t, schedule=schedule)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_var)) / _LN2
    decoder_nll = -discretized_gaussian_log_likelihood(x0, means=out.mean, log_scales=0.5 * out.log_var)
    decoder_nll = mean_flat(decoder_nll) / _LN2
    return torch.where(t == 0, decoder_nll, kl)


def prior_bpd(x0: Tensor, *, schedule: Schedule) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim per image (DDPM Eq. 5); not trainable."""
    t = torch.full((x0.shape[0],), schedule.num_steps - 1, dtype=torch.long, device=x0.device)
    ab = schedule.alpha_bar
    sqrt_alpha_bar = gather(torch.sqrt(ab), t, x0.ndim, dtype=math_dtype(x0))
    log_var = gather(torch.log(1.0 - ab), t, x0.ndim, dtype=math_dtype(x0))
    kl = normal_kl(sqrt_alpha_bar * x0, log_var, 0.0, 0.0)
    return mean_flat(kl.expand(x0.shape)) / _LN2
