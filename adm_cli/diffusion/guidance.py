"""Guidance: shift p(x_{t-1} | x_t) towards a condition y (ADM Sec. 4; Ho & Salimans 2021).

Glossary: grad = s · ∇_{x_t} log p_φ(y | x_t) (the classifier gradient, already scaled),
pmv = p_mean_variance output, eps_pred = ε̂_θ(x_t), alpha_bar = ᾱ_t.
A sampler's `cond_fn(x_t, model_t) -> grad` is typically
`lambda x, t: classifier_grad(classifier, x, t, y, scale)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from adm_cli.diffusion.gaussian import (
    PMeanVar,
    gather,
    math_dtype,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_posterior,
)
from adm_cli.diffusion.schedule import Schedule

__all__ = ["classifier_free", "classifier_grad", "condition_mean", "condition_score"]


def condition_mean(grad: Tensor, pmv: PMeanVar) -> PMeanVar:
    """Classifier-guided ancestral step: μ' = μ + Σ · grad (ADM Alg. 1; Sohl-Dickstein et al. 2015).

    Computed in float32 at least (guided-diffusion casts to float32); only the mean changes.
    """
    dtype = math_dtype(pmv.mean)
    mean = pmv.mean.to(dtype) + pmv.var * grad.to(dtype)
    return pmv._replace(mean=mean)


def condition_score(grad: Tensor, pmv: PMeanVar, x_t: Tensor, t: Tensor, *, schedule: Schedule) -> PMeanVar:
    """Classifier-guided score: ε' = ε̂ - √(1 - ᾱ_t) · grad (ADM Alg. 2; Song et al. 2021).

    x̂_0 and the mean are recomputed from ε' (x̂_0 is not clipped again); the variance is kept.
    """
    sqrt_one_minus_alpha_bar = gather(torch.sqrt(1.0 - schedule.alpha_bar), t, x_t.ndim, dtype=math_dtype(x_t))
    eps = predict_eps_from_x0(x_t, t, pmv.x0_pred, schedule=schedule)
    eps = eps - sqrt_one_minus_alpha_bar * grad
    x0_pred = predict_x0_from_eps(x_t, t, eps, schedule=schedule)
    mean, _, _ = q_posterior(x0_pred, x_t, t, schedule=schedule)
    return pmv._replace(mean=mean, x0_pred=x0_pred, eps_pred=eps)


def classifier_grad(
    classifier_fn: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, model_t: Tensor, y: Tensor, scale: float
) -> Tensor:
    """s · ∇_{x_t} log softmax(classifier(x_t, t))[y] (ADM Algs. 1-2; guided-diffusion classifier_sample.py).

    Gradients flow only to x_t (classifier parameters are not differentiated); works inside
    `torch.no_grad()` sampling loops. `model_t` is the network timestep, as for the diffusion model.
    """
    with torch.enable_grad():
        x_in = x_t.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier_fn(x_in, model_t).float(), dim=-1)  # (B, classes)
        selected = log_probs[torch.arange(log_probs.shape[0], device=log_probs.device), y.view(-1)]
        (grad,) = torch.autograd.grad(selected.sum(), x_in)
    return grad * scale


def classifier_free(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ε̃ = (1 + w) ε(x_t, y) - w ε(x_t) (Ho & Salimans 2021, Eq. 6).

    Convention: w = `scale` = 0 is the plain conditional model, w > 0 guides harder. The other
    common convention, s · ε(x_t, y) + (1 - s) ε(x_t) (e.g. diffusers' guidance_scale), is s = 1 + w.
    """
    return eps_cond + scale * (eps_cond - eps_uncond)
