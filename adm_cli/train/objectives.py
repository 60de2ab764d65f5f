"""Training objectives: L_simple, the hybrid loss and the VLB for diffusion models (IDDPM Sec. 3),
with ε-, x_0- or v-prediction (Salimans & Ho 2022) and an optional per-t weight of the MSE term
(Min-SNR-γ, P2: `adm_cli.train.weighting`), and the cross-entropy of the noise-aware classifier
(ADM Sec. 4.1).

Every function returns per-image terms, shape (B,); the training loop weights them (importance
sampling of t) and averages. Names follow the diffusion glossary in `adm_cli.diffusion`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import Schedule, mean_flat, p_mean_variance, q_velocity, vlb_terms
from adm_cli.train.weighting import mse_weight

Loss = Literal["simple", "hybrid", "kl"]

__all__ = ["Loss", "LAMBDA_VLB", "classifier_terms", "diffusion_terms", "default_loss", "input_perturbed_noise"]

LAMBDA_VLB = 0.001
"""λ of L_hybrid = L_simple + λ L_vlb (IDDPM Eq. 16)."""


def default_loss(config: DiffusionConfig) -> Loss:
    """The paper's choice: hybrid with a learned variance, L_simple otherwise."""
    return "hybrid" if config.learned_variance else "simple"


def input_perturbed_noise(noise: Tensor, xi: Tensor, gamma: float) -> Tensor:
    """ε + γ ξ, the noise x_t is built from under input perturbation (DDPM-IP).

    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) (ε + γ ξ), ξ ~ N(0, I) independent of ε; the target stays ε
    (Ning et al. 2023, arXiv 2301.11706; forever208/DDPM-IP gaussian_diffusion.py training_losses,
    γ = 0.1 there).
    """
    return noise + gamma * xi


def diffusion_terms(
    model_output: Tensor,
    *,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: Schedule,
    config: DiffusionConfig,
    loss: Loss,
    min_snr_gamma: float | None = None,
    p2_gamma: float = 0.0,
    p2_k: float = 1.0,
) -> dict[str, Tensor]:
    """Per-image loss terms for one noised batch x_t = q_sample(x0, t, noise).

    simple  L_simple = w_t ‖target − out‖² averaged over pixels (DDPM Eq. 14), target ε, x_0 or
            v = α_t ε − σ_t x_0 (Salimans & Ho 2022), w_t = 1, or Min-SNR-γ's or P2's weight
            (`mse_weight`) when `min_snr_gamma` / `p2_gamma` is set.
    hybrid  L_simple + λ·T·L_t, λ = 0.001 (IDDPM Eq. 16): the VLB term L_t (bits/dim) uses the
            learned variance with the *mean detached*, so L_vlb trains Σ_θ only (IDDPM Sec. 3.1);
            λ·T = T/1000 is guided-diffusion's RESCALED_MSE weight (= 1 at T = 1000).
    kl      L_t alone (bits/dim), the variational bound term at t (guided-diffusion LossType.KL).
    The VLB term uses T = the number of steps of `schedule` (training uses the full schedule) and
    is never weighted by w_t (as in the Min-SNR and P2 authors' code).
    With input perturbation (DDPM-IP) x_t is built from ε + γ ξ but `noise` is ε: the target
    stays ε (or the v of ε), and the VLB term sees the perturbed x_t, as in DDPM-IP's code.
    Returns {"loss", and "mse" and/or "vb"}, each (B,), float32.
    """
    out = model_output.float()
    channels = x_t.shape[1]
    terms: dict[str, Tensor] = {}
    if loss == "kl":
        if min_snr_gamma is not None or p2_gamma != 0:
            raise ValueError("Min-SNR-γ and P2 weight the MSE term, which the kl loss does not have")
        pmv = p_mean_variance(out, x_t, t, schedule=schedule, config=config, clip_denoised=False)
        terms["vb"] = vlb_terms(pmv, x0, x_t, t, schedule=schedule)
        terms["loss"] = terms["vb"]
        return terms
    if loss not in ("simple", "hybrid"):
        raise ValueError(f"unknown loss {loss!r} (simple, hybrid or kl)")
    if config.learned_variance:
        mean_out, var_values = torch.split(out, channels, dim=1)  # 2 x (B, C, H, W)
        # Stop-gradient on the mean: the VLB term only moves the variance.
        frozen = torch.cat([mean_out.detach(), var_values], dim=1)  # (B, 2C, H, W)
        pmv = p_mean_variance(frozen, x_t, t, schedule=schedule, config=config, clip_denoised=False)
        terms["vb"] = vlb_terms(pmv, x0, x_t, t, schedule=schedule) * (schedule.num_steps * LAMBDA_VLB)
    else:
        if loss == "hybrid":
            raise ValueError("the hybrid loss needs a learned variance (learn_sigma)")
        mean_out = out
    if config.mean_type == "epsilon":
        target = noise
    elif config.mean_type == "x0":
        target = x0
    else:
        target = q_velocity(x0, t, noise, schedule=schedule)
    terms["mse"] = mean_flat((target.float() - mean_out) ** 2)
    weight = mse_weight(schedule, t, mean_type=config.mean_type, min_snr_gamma=min_snr_gamma,
                        p2_gamma=p2_gamma, p2_k=p2_k)
    if weight is not None:
        terms["mse"] = weight * terms["mse"]
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms


def classifier_terms(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per-image cross-entropy and top-1 / top-5 hits of the noise-aware classifier (ADM Sec. 4.1)."""
    logits = logits.float()
    terms = {"loss": F.cross_entropy(logits, labels, reduction="none")}
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    terms["acc@1"] = hits[:, 0].float()
    terms["acc@5"] = hits.any(dim=1).float()
    return terms
