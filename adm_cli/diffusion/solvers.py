"""Fast ODE solvers of the probability-flow ODE: DPM-Solver++(2M/3M), UniPC (B(h) = bh2), EDM's Heun.

All run over the steps of the denoiser's (respaced) schedule, from its last step down to step 0,
then one more step to the clean level (ᾱ = 1, σ = 0, λ = +∞), as DDIM does: K schedule steps cost
K network evaluations (Heun: 2K - 1). The last step to the clean level is first order for every
solver (the higher-order terms vanish or diverge as h -> ∞; k-diffusion does the same), so it
returns x̂_0 of the last evaluation. They read x̂_0 (data prediction) from the denoiser; learned-Σ
models contribute only their ε channels.

Glossary (DPM-Solver++ = Lu et al. 2022, arXiv 2211.01095; UniPC = Zhao et al. 2023; EDM =
Karras et al. 2022):
    alpha, sigma   α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t)    (VP: x_t = α_t x_0 + σ_t ε)
    lam            λ_t = log(α_t / σ_t)             h = λ_t - λ_s, the step in half log-SNR
    x0             x̂_0 = D(x_t) from the denoiser    history: [(λ_k, x̂_0 at λ_k)], newest last
    edm_sigma      σ^EDM = σ_t / α_t, and x^EDM = x_t / α_t (EDM Table 1, VP)
Step functions are pure; each sampler is one loop with the signature of `sample_ddim`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from adm_cli.diffusion.denoiser import Denoiser
from adm_cli.diffusion.samplers import Callback, Progress, step_indices, check_score_guidance
from adm_cli.diffusion.schedule import Schedule, edm_sigma, log_snr

__all__ = [
    "dpmpp_step",
    "levels",
    "sample_dpmpp",
    "sample_heun",
    "sample_unipc",
    "unipc_coefficients",
]

History = Sequence[tuple[float, Tensor]]


def levels(schedule: Schedule) -> tuple[list[float], list[float], list[float]]:
    """α_k, σ_k, λ_k of every step k of `schedule` as Python floats (float64 arithmetic)."""
    ab = schedule.alpha_bar.cpu()
    return torch.sqrt(ab).tolist(), torch.sqrt(1 - ab).tolist(), log_snr(ab).tolist()


def _lower_order_final(order: int, i: int, total: int) -> int:
    """DPM-Solver's `lower_order_final`: with fewer than 10 steps the last steps use lower orders,
    which its authors found more stable; the step to the clean level is always first order."""
    return min(order, total - i) if total < 10 else (1 if i == total - 1 else order)


def dpmpp_step(x: Tensor, history: History, *, sigma_s: float, alpha_t: float, sigma_t: float, lam_t: float,
               order: int) -> Tensor:
    """One multistep DPM-Solver++ update from level s (the newest history entry) to t (Alg. 2, App. B).

    order 1:  x_t = σ_t/σ_s x_s - α_t (e^{-h} - 1) x̂_0(s)                     (= DDIM, η = 0)
    order 2:  ... with x̂_0(s) replaced by (1 + 1/(2r)) x̂_0(s) - 1/(2r) x̂_0(s-1), r = h_{-1}/h
    order 3:  φ_1 = e^{-h} - 1, φ_2 = φ_1/h + 1, φ_3 = φ_2/h - ½ with the first and second
              divided differences D_1, D_2 of x̂_0 (dpm_solver_pytorch, third-order multistep)
    """
    lam_s, x0_s = history[-1]
    h = lam_t - lam_s
    phi_1 = math.expm1(-h)
    x_t = (sigma_t / sigma_s) * x - (alpha_t * phi_1) * x0_s
    if order == 1:
        return x_t
    lam_1, x0_1 = history[-2]
    r0 = (lam_s - lam_1) / h
    d1_0 = (x0_s - x0_1) / r0
    if order == 2:
        return x_t - 0.5 * (alpha_t * phi_1) * d1_0
    lam_2, x0_2 = history[-3]
    r1 = (lam_1 - lam_2) / h
    d1_1 = (x0_1 - x0_2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return x_t + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2


def sample_dpmpp(
    denoise: Denoiser,
    x_T: Tensor,
    *,
    order: int = 2,
    callback: Callback | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """Multistep DPM-Solver++(2M) or (3M) in data prediction (Lu et al. 2022, Alg. 2).

    Each step reuses the x̂_0 of the previous one or two steps, so K steps cost K evaluations;
    the first steps warm up at lower order.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    check_score_guidance(denoise, "DPM-Solver++")
    alpha, sigma, lam = levels(denoise.schedule)
    total = denoise.schedule.num_steps
    x, history = x_T, []
    with torch.no_grad():
        for i, step in enumerate(reversed(range(total))):
            t = step_indices(x, step)
            out = denoise(x, t)
            history = [*history[-2:], (lam[step], out.x0_pred)]
            if step == 0:
                x = out.x0_pred  # first order to λ = ∞: x_t = α_t x̂_0 with α_t = 1
            else:
                step_order = min(_lower_order_final(order, i, total), len(history))
                x = dpmpp_step(
                    x, history, sigma_s=sigma[step], alpha_t=alpha[step - 1], sigma_t=sigma[step - 1],
                    lam_t=lam[step - 1], order=step_order,
                )
            if callback is not None:
                callback(i, t, x, out)
            if progress is not None:
                progress(i + 1, total)
    return x


def unipc_coefficients(h: float, rks: Sequence[float], order: int) -> tuple[float, np.ndarray, np.ndarray | None]:
    """UniPC-bh2 coefficients for a step of size h with ratios r_k = (λ_{s-k} - λ_s)/h (UniPC Alg. 1-2).

    Returns B(h) = e^{hh} - 1 with hh = -h (data prediction), the corrector weights ρ^c (order+1
    unknowns solved from R ρ = b, Eq. 8; ½ for order 1) and the predictor weights ρ^p (½ for the
    second order, None for the first).
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)  # bh2: B(h) = e^h - 1
    h_phi_k, factorial = h_phi_1 / hh - 1.0, 1
    ratios = np.array([*rks, 1.0])
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(ratios ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    rhos_p = None
    if order >= 2:
        rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(np.stack(rows)[:-1, :-1], np.array(b)[:-1])
    rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(np.stack(rows), np.array(b))
    return b_h, rhos_c, rhos_p


def _unipc_terms(history: History, h: float, order: int) -> tuple[list[float], list[Tensor]]:
    """r_k and the scaled differences D_k = (x̂_0(s-k) - x̂_0(s)) / r_k for k = 1 .. order-1."""
    lam_s, x0_s = history[-1]
    rks, d1s = [], []
    for k in range(1, order):
        lam_k, x0_k = history[-(k + 1)]
        r = (lam_k - lam_s) / h
        rks.append(r)
        d1s.append((x0_k - x0_s) / r)
    return rks, d1s


def unipc_predict(x: Tensor, history: History, *, sigma_s: float, alpha_t: float, sigma_t: float, lam_t: float,
                  order: int) -> Tensor:
    """UniP-bh2: x_t = σ_t/σ_s x_s - α_t (e^{-h} - 1) x̂_0(s) - α_t B(h) Σ_k ρ^p_k D_k (UniPC Alg. 2);
    the first two terms are the first-order DPM-Solver++ step."""
    h = lam_t - history[-1][0]
    x_t = dpmpp_step(x, history, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, lam_t=lam_t, order=1)
    if order == 1:
        return x_t
    rks, d1s = _unipc_terms(history, h, order)
    b_h, _, rhos_p = unipc_coefficients(h, rks, order)
    assert rhos_p is not None
    return x_t - (alpha_t * b_h) * sum(float(rho) * d for rho, d in zip(rhos_p, d1s))


def unipc_correct(x_s: Tensor, history: History, x0_t: Tensor, *, sigma_s: float, alpha_t: float, sigma_t: float,
                  lam_t: float, order: int) -> Tensor:
    """UniC-bh2: re-take the step s -> t with the new x̂_0(t) as one more point (UniPC Alg. 1).

    x_t^c = σ_t/σ_s x_s - α_t (e^{-h} - 1) x̂_0(s) - α_t B(h) (Σ_k ρ^c_k D_k + ρ^c_order (x̂_0(t) - x̂_0(s))).
    """
    lam_s, x0_s = history[-1]
    h = lam_t - lam_s
    rks, d1s = _unipc_terms(history, h, order)
    b_h, rhos_c, _ = unipc_coefficients(h, rks, order)
    x_t = dpmpp_step(x_s, history, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t, lam_t=lam_t, order=1)
    correction = sum(float(rho) * d for rho, d in zip(rhos_c[:-1], d1s)) + float(rhos_c[-1]) * (x0_t - x0_s)
    return x_t - (alpha_t * b_h) * correction


def sample_unipc(
    denoise: Denoiser,
    x_T: Tensor,
    *,
    order: int = 2,
    callback: Callback | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """UniPC with B(h) = e^h - 1 (bh2), data prediction (Zhao et al. 2023, Algs. 1-2).

    The evaluation at each new point both corrects that point (UniC, one order higher) and
    feeds the next prediction (UniP), so the corrector costs no extra evaluation. The callback
    sees each point as predicted; it is corrected at the next iteration.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    check_score_guidance(denoise, "UniPC")
    alpha, sigma, lam = levels(denoise.schedule)
    total = denoise.schedule.num_steps
    x, history, x_prev, prev_order = x_T, [], x_T, 1
    with torch.no_grad():
        for i, step in enumerate(reversed(range(total))):
            t = step_indices(x, step)
            out = denoise(x, t)
            if history and step > 0:  # correct the point just reached (useless before the last step)
                x = unipc_correct(
                    x_prev, history, out.x0_pred, sigma_s=sigma[step + 1], alpha_t=alpha[step],
                    sigma_t=sigma[step], lam_t=lam[step], order=prev_order,
                )
            history = [*history[-(order - 1):], (lam[step], out.x0_pred)] if order > 1 else [(lam[step], out.x0_pred)]
            if step == 0:
                x = out.x0_pred  # first order to λ = ∞
            else:
                x_prev, prev_order = x, min(_lower_order_final(order, i, total), len(history))
                x = unipc_predict(
                    x, history, sigma_s=sigma[step], alpha_t=alpha[step - 1], sigma_t=sigma[step - 1],
                    lam_t=lam[step - 1], order=prev_order,
                )
            if callback is not None:
                callback(i, t, x, out)
            if progress is not None:
                progress(i + 1, total)
    return x


def sample_heun(
    denoise: Denoiser,
    x_T: Tensor,
    *,
    callback: Callback | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """EDM's deterministic sampler, Heun's 2nd-order method in σ (Karras et al. 2022, Alg. 1).

    dx/dσ = (x - D(x; σ)) / σ for x = x_t / α_t, σ = σ_t / α_t, over the schedule's own σ steps then
    σ = 0. Each step but the last (Euler, to σ = 0) takes a second evaluation at its end point:
    K steps cost 2K - 1 evaluations.
    """
    check_score_guidance(denoise, "Heun")
    ab = denoise.schedule.alpha_bar.cpu()
    sigmas = edm_sigma(ab).tolist()
    scale = torch.sqrt(1.0 + edm_sigma(ab) ** 2).tolist()  # 1/α_t: x^EDM = x_t · scale
    total = denoise.schedule.num_steps
    x = x_T * scale[-1]
    with torch.no_grad():
        for i, step in enumerate(reversed(range(total))):
            t = step_indices(x, step)
            sigma_cur = sigmas[step]
            sigma_next = sigmas[step - 1] if step > 0 else 0.0
            # Euler step.
            out = denoise(x / scale[step], t)
            d_cur = (x - out.x0_pred) / sigma_cur
            x_next = x + (sigma_next - sigma_cur) * d_cur
            # Second-order correction, except on the step to σ = 0.
            if step > 0:
                d_next = (x_next - denoise(x_next / scale[step - 1], t - 1).x0_pred) / sigma_next
                x_next = x + (sigma_next - sigma_cur) * (0.5 * d_cur + 0.5 * d_next)
            x = x_next
            if callback is not None:
                callback(i, t, x / (scale[step - 1] if step > 0 else 1.0), out)
            if progress is not None:
                progress(i + 1, total)
    return x
