"""Gaussian diffusion: schedules, the forward and reverse processes, losses, samplers, guidance.

Glossary (code name -> symbol; DDPM = Ho et al. 2020, IDDPM = Nichol & Dhariwal 2021,
DDIM = Song et al. 2021, ADM = Dhariwal & Nichol 2021):

    betas              β_t                  alpha_bar          ᾱ_t = Π_{s<=t} (1 - β_s)
    alpha_bar_prev     ᾱ_{t-1}              posterior_var      β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
    x0, x_t            x_0, x_t             x0_pred, eps_pred  x̂_0, ε̂_θ(x_t, t)
    v                  α_t ε − σ_t x_0 (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t); Salimans & Ho 2022)
    mean, var, log_var μ_θ, Σ_θ, log Σ_θ    eta                η (DDIM)
    t                  step index into a (possibly respaced) schedule
    model_t            the network's timestep: schedule.timesteps[t] (x 1000/T if rescaled)
    grad               s · ∇_{x_t} log p_φ(y | x_t)

Data flow: `make_schedule(config, respacing)` (or `solver_timesteps` + `respace`) -> `Schedule`;
a `Denoiser` wraps the network, the schedule, clipping and `Guidance` and returns x̂_0, ε̂ and
p(x_{t-1} | x_t) (`p_mean_variance`) at (x_t, t); the samplers `sample_ddpm`, `sample_ddim`,
`sample_dpmpp`, `sample_unipc`, `sample_heun` and `ddim_invert` are loops over pure step
functions (`ddpm_step`, `ddim_step`, `dpmpp_step`, ...) that only see the denoiser.
"""

from adm_cli.diffusion.denoiser import Denoiser, Guidance, classifier_gradient, dynamic_threshold
from adm_cli.diffusion.gaussian import (
    PMeanVar,
    gather,
    math_dtype,
    p_mean_variance,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior,
    q_sample,
    q_velocity,
)
from adm_cli.diffusion.guidance import classifier_free, classifier_grad, condition_mean, condition_score
from adm_cli.diffusion.losses import (
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    prior_bpd,
    vlb_terms,
)
from adm_cli.diffusion.samplers import (
    check_score_guidance,
    ddim_invert,
    ddim_reverse_step,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    per_image_noise,
    sample_ddim,
    sample_ddpm,
)
from adm_cli.diffusion.schedule import (
    SPACINGS,
    Schedule,
    betas_for,
    cosine_betas,
    edm_sigma,
    linear_betas,
    log_snr,
    make_schedule,
    model_timesteps,
    respace,
    solver_timesteps,
    space_timesteps,
)
from adm_cli.diffusion.solvers import dpmpp_step, sample_dpmpp, sample_heun, sample_unipc

__all__ = [
    "SPACINGS",
    "Denoiser",
    "Guidance",
    "PMeanVar",
    "Schedule",
    "check_score_guidance",
    "classifier_gradient",
    "dpmpp_step",
    "dynamic_threshold",
    "edm_sigma",
    "log_snr",
    "sample_dpmpp",
    "sample_heun",
    "sample_unipc",
    "solver_timesteps",
    "betas_for",
    "classifier_free",
    "classifier_grad",
    "condition_mean",
    "condition_score",
    "cosine_betas",
    "ddim_invert",
    "ddim_reverse_step",
    "ddim_sigma",
    "ddim_step",
    "ddpm_step",
    "discretized_gaussian_log_likelihood",
    "gather",
    "linear_betas",
    "make_schedule",
    "math_dtype",
    "mean_flat",
    "model_timesteps",
    "normal_kl",
    "p_mean_variance",
    "per_image_noise",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_x0",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "prior_bpd",
    "q_posterior",
    "q_sample",
    "q_velocity",
    "respace",
    "sample_ddim",
    "sample_ddpm",
    "space_timesteps",
    "vlb_terms",
]
