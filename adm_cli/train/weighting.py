"""Per-timestep weights of the MSE term: Min-SNR-γ (Hang et al. 2023) and P2 (Choi et al. 2022).

Glossary: alpha_bar = ᾱ_t, snr = SNR_t = ᾱ_t / (1 − ᾱ_t) = α_t² / σ_t², gamma = γ, k = k of P2.
Each weight multiplies the per-image MSE ‖target − out‖² (mean over pixels) of the network's
mean channels; the VLB term of the hybrid loss is left as it is (as in both papers' code).
Weights are computed from the float64 schedule tables and returned as float32 (B,) tensors.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from adm_cli.diffusion import Schedule

__all__ = ["min_snr_weight", "mse_weight", "p2_weight", "snr"]


def snr(alpha_bar: Tensor) -> Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t), the signal-to-noise ratio of x_t (Kingma et al. 2021, Eq. 1; Min-SNR Sec. 3)."""
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weight(snr_t: Tensor, gamma: float, mean_type: Literal["epsilon", "x0", "v"]) -> Tensor:
    """Min-SNR-γ loss weight w_t = min(SNR_t, γ), expressed for the network's output type.

    The x_0 loss ‖x_0 − x̂_0‖² weighted by min(SNR_t, γ) (Hang et al. 2023, arXiv 2303.09556, Sec. 3)
    equals, since ‖ε − ε̂‖² = SNR_t ‖x_0 − x̂_0‖² and ‖v − v̂‖² = (SNR_t + 1) ‖x_0 − x̂_0‖²:
      ε-prediction  min(SNR_t, γ) / SNR_t
      x_0           min(SNR_t, γ)
      v             min(SNR_t, γ) / (SNR_t + 1)
    (the authors' code: guided_diffusion/gaussian_diffusion.py, mse_loss_weight_type "min_snr_γ"
    for ε and x_0, "vmin_snr_γ" for v). SNR_t = 0 gets weight 1, as there.
    """
    clipped = torch.clamp(snr_t, max=gamma)
    if mean_type == "epsilon":
        weight = clipped / snr_t
    elif mean_type == "x0":
        weight = clipped
    elif mean_type == "v":
        weight = clipped / (snr_t + 1.0)
    else:
        raise ValueError(f"unknown mean type {mean_type!r}")
    return torch.where(snr_t == 0, torch.ones_like(weight), weight)


def p2_weight(snr_t: Tensor, gamma: float, k: float = 1.0) -> Tensor:
    """P2 weight 1 / (k + SNR_t)^γ on L_simple (Choi et al. 2022, arXiv 2204.00227: λ'_t = λ_t / (k + SNR_t)^γ
    with λ_t the weight L_simple already gives; γ = 0 gives 1). Their code (jychoi118/P2-weighting,
    gaussian_diffusion.py training_losses) applies it to the MSE term only."""
    return 1.0 / (k + snr_t) ** gamma


def mse_weight(
    schedule: Schedule,
    t: Tensor,
    *,
    mean_type: Literal["epsilon", "x0", "v"],
    min_snr_gamma: float | None = None,
    p2_gamma: float = 0.0,
    p2_k: float = 1.0,
) -> Tensor | None:
    """The (B,) float32 weight of the MSE term at step indices t, or None when no weighting is on."""
    if min_snr_gamma is not None and p2_gamma != 0:
        raise ValueError("Min-SNR-γ and P2 weighting cannot be combined")
    if min_snr_gamma is None and p2_gamma == 0:
        return None
    snr_t = snr(schedule.alpha_bar).to(t.device)[t]  # (B,) float64
    if min_snr_gamma is not None:
        weight = min_snr_weight(snr_t, min_snr_gamma, mean_type)
    else:
        weight = p2_weight(snr_t, p2_gamma, p2_k)
    return weight.float()
