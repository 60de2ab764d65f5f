"""Noise schedules, their derived float64 tables, and timestep respacing.

Glossary (code name -> symbol, as in DDPM / IDDPM / ADM):

    betas                      β_t
    alpha_bar                  ᾱ_t = Π_{s<=t} (1 - β_s)
    alpha_bar_prev             ᾱ_{t-1}   (ᾱ_{-1} = 1)
    alpha_bar_next             ᾱ_{t+1}   (ᾱ_T = 0; used by DDIM inversion)
    posterior_var              β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
    posterior_log_var_clipped  log β̃_t with β̃_0 := β̃_1 (β̃_0 is 0)
    posterior_mean_coef1/2     μ̃_t = coef1 · x_0 + coef2 · x_t
    timesteps                  the original-process index of each step (what the network sees)

Index t always counts the schedule's own steps (0 .. num_steps-1). A respaced schedule is an
explicit (betas, timesteps) pair: its `timesteps` map step t back to the step of the process
the network was trained on, so no model wrapper is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from adm_cli.config import DiffusionConfig

__all__ = [
    "SPACINGS",
    "Schedule",
    "edm_sigma",
    "log_snr",
    "solver_timesteps",
    "betas_for",
    "cosine_betas",
    "linear_betas",
    "make_schedule",
    "model_timesteps",
    "respace",
    "space_timesteps",
]

_F64 = torch.float64


def linear_betas(steps: int) -> Tensor:
    """DDPM's linear schedule, scaled so any step count spans the same process (IDDPM Sec. 3.2).

    β_t = linspace(s · 1e-4, s · 0.02, steps) with s = 1000 / steps; β_T = 20 / steps, so the
    schedule needs at least 20 steps.
    """
    if steps < 20:
        raise ValueError(f"the linear schedule needs at least 20 steps (its last beta is 20/steps), got {steps}")
    scale = 1000.0 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=_F64)


def cosine_betas(steps: int, max_beta: float = 0.999) -> Tensor:
    """IDDPM's cosine schedule (IDDPM Eq. 17).

    ᾱ(u) = cos²((u + s) / (1 + s) · π/2), s = 0.008; β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    # Python floats keep the values bit-identical to the reference's scalar loop.
    betas = [min(1.0 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)]
    return torch.tensor(betas, dtype=_F64)


def betas_for(config: DiffusionConfig) -> Tensor:
    """β_1..β_T of the configured schedule, float64."""
    if config.schedule == "linear":
        return linear_betas(config.steps)
    if config.schedule == "cosine":
        return cosine_betas(config.steps)
    raise ValueError(f"unknown noise schedule {config.schedule!r}")


@dataclass(frozen=True, eq=False)
class Schedule:
    """The float64 tables of one (possibly respaced) Gaussian diffusion process.

    Build it with `Schedule.from_betas`, `make_schedule` or `respace`; every table has one
    entry per step of this schedule.
    """

    betas: Tensor
    alpha_bar: Tensor
    alpha_bar_prev: Tensor
    alpha_bar_next: Tensor
    posterior_var: Tensor
    posterior_log_var_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    timesteps: Tensor  # int64: original-process index of each step
    original_steps: int  # length of the process the network was trained on

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(
        cls,
        betas: Tensor | Sequence[float],
        timesteps: Tensor | Sequence[int] | None = None,
        *,
        original_steps: int | None = None,
    ) -> Schedule:
        """Derive every table from β (DDPM Eqs. 4, 6, 7), in float64."""
        betas = torch.as_tensor(betas, dtype=_F64).cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        n = betas.shape[0]
        if timesteps is None:
            timesteps = torch.arange(n, dtype=torch.int64)
        timesteps = torch.as_tensor(timesteps, dtype=torch.int64).cpu()
        if timesteps.shape != (n,):
            raise ValueError(f"need one timestep per beta: {tuple(timesteps.shape)} vs ({n},)")
        original_steps = n if original_steps is None else int(original_steps)

        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        one = torch.ones(1, dtype=_F64)
        alpha_bar_prev = torch.cat([one, alpha_bar[:-1]])
        alpha_bar_next = torch.cat([alpha_bar[1:], torch.zeros(1, dtype=_F64)])
        posterior_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        # β̃_0 = 0, so its log is clipped to β̃_1 (a one-step process falls back to β_0).
        first = posterior_var[1:2] if n > 1 else betas[:1]
        return cls(
            betas=betas,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            alpha_bar_next=alpha_bar_next,
            posterior_var=posterior_var,
            posterior_log_var_clipped=torch.log(torch.cat([first, posterior_var[1:]])),
            posterior_mean_coef1=betas * torch.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            posterior_mean_coef2=(1.0 - alpha_bar_prev) * torch.sqrt(alphas) / (1.0 - alpha_bar),
            timesteps=timesteps,
            original_steps=original_steps,
        )

    def to(self, device: torch.device | str) -> Schedule:
        """The same tables on `device` (saves a host-to-device copy per lookup when sampling)."""
        moved = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), Tensor) else v) for f in fields(self)
        }
        return Schedule(**moved)


def make_schedule(config: DiffusionConfig, respacing: int | str | Sequence[int] | None = None) -> Schedule:
    """The configured process, optionally respaced with a `space_timesteps` spec ("ddim25", "250", ...)."""
    schedule = Schedule.from_betas(betas_for(config))
    if respacing is None or respacing == "":
        return schedule
    return respace(schedule, space_timesteps(config.steps, respacing))


def respace(schedule: Schedule, use_timesteps: Iterable[int]) -> Schedule:
    """Keep only `use_timesteps` (indices into `schedule`) of a process (IDDPM Sec. 4, Eq. 19).

    The kept steps keep their ᾱ: β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}}. Every other table (β̃, the
    learned-variance interpolation range [β̃', β']) is then derived from β', which is what
    respaces learned variances correctly.
    """
    keep = sorted(set(int(k) for k in use_timesteps))
    if not keep:
        raise ValueError("respacing needs at least one timestep")
    if keep[0] < 0 or keep[-1] >= schedule.num_steps:
        raise ValueError(f"timesteps must lie in [0, {schedule.num_steps}), got {keep[0]}..{keep[-1]}")
    index = torch.tensor(keep, dtype=torch.int64)
    alpha_bar = schedule.alpha_bar.cpu()[index]
    alpha_bar_before = torch.cat([torch.ones(1, dtype=_F64), alpha_bar[:-1]])
    return Schedule.from_betas(
        1.0 - alpha_bar / alpha_bar_before,
        schedule.timesteps.cpu()[index],
        original_steps=schedule.original_steps,
    )


def model_timesteps(schedule: Schedule, t: Tensor, *, rescale: bool) -> Tensor:
    """The timesteps the network sees for step indices `t`.

    The original-process index of each step; with `rescale` (IDDPM's rescale_timesteps) as float
    t · 1000 / original_steps.
    """
    model_t = schedule.timesteps.to(t.device)[t]
    if rescale:
        return model_t.float() * (1000.0 / schedule.original_steps)
    return model_t


def space_timesteps(num_steps: int, spec: int | str | Sequence[int]) -> tuple[int, ...]:
    """Steps to keep from a `num_steps` process (IDDPM Sec. 4; guided-diffusion respace.py).

    `spec` is one of:
      - an int or a numeric string ("250"): that many steps, evenly spread (one section);
      - "ddimN": exactly N steps with an integer stride, 0, k, 2k, ... (DDIM Sec. 5);
      - section counts "90,60,60,20,20" (or a sequence of ints): the process is cut into equal
        sections (the first `num_steps % len` one step longer) and section i is strided to
        count i steps, first and last step of the section included;
      - "" : no respacing (all steps).
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "":
            return tuple(range(num_steps))
        if spec.startswith("ddim"):
            return _ddim_steps(num_steps, spec)
        if not re.fullmatch(r"\s*-?\d+\s*(,\s*-?\d+\s*)*", spec):
            raise ValueError(f"cannot parse timestep respacing {spec!r}: expected 'N', 'ddimN' or 'N1,N2,...'")
        counts = [int(part) for part in spec.split(",")]
    elif isinstance(spec, int):
        counts = [spec]
    else:
        counts = [int(c) for c in spec]
    if not counts:
        raise ValueError("timestep respacing needs at least one section count")
    for count in counts:
        if count <= 0:
            raise ValueError(f"every section count must be positive, got {count} in {counts}")
    if sum(counts) > num_steps:
        raise ValueError(f"cannot take {sum(counts)} steps from a {num_steps}-step process")

    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from section {i} of {size} steps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            # Accumulated float position and Python's round() (half to even), as the reference.
            steps.append(start + round(position))
            position += stride
        start += size
    return tuple(sorted(set(steps)))


def _ddim_steps(num_steps: int, spec: str) -> tuple[int, ...]:
    """DDIM's fixed striding: the smallest integer stride k with len(range(0, T, k)) == N."""
    try:
        count = int(spec[len("ddim") :])
    except ValueError:
        raise ValueError(f"cannot parse {spec!r}: expected 'ddimN' with an integer N") from None
    if count <= 0:
        raise ValueError(f"ddim step count must be positive, got {count}")
    for stride in range(1, num_steps + 1):
        if len(range(0, num_steps, stride)) == count:
            return tuple(range(0, num_steps, stride))
    raise ValueError(f"cannot take exactly {count} steps from a {num_steps}-step process with an integer stride")


# --------------------------------------------------------------------------- solver step choice

Spacing = Literal["time-uniform", "logsnr", "karras"]
SPACINGS: tuple[str, ...] = ("time-uniform", "logsnr", "karras")


def log_snr(alpha_bar: Tensor) -> Tensor:
    """λ_t = log(α_t / σ_t) = ½ (log ᾱ_t - log(1 - ᾱ_t)), the half log-SNR (DPM-Solver Sec. 3.1)."""
    return 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))


def edm_sigma(alpha_bar: Tensor) -> Tensor:
    """σ_t = √((1 - ᾱ_t) / ᾱ_t), the noise level of x_t / √ᾱ_t (EDM Sec. 2, Table 1 'VP')."""
    return torch.sqrt((1.0 - alpha_bar) / alpha_bar)


def solver_timesteps(
    schedule: Schedule,
    count: int,
    spacing: Spacing,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> tuple[int, ...]:
    """`count` distinct steps of a discrete process, increasing, for an ODE solver.

    time-uniform  evenly spaced in t from 0 to T-1 (DPM-Solver's 'time_uniform'; this is
                  guided-diffusion's plain respacing, `space_timesteps(T, count)`)
    logsnr        evenly spaced in λ between λ_{T-1} and λ_0 (DPM-Solver's 'logSNR')
    karras        σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ (EDM Eq. 5, ρ = 7),
                  σ_max = min(80, σ_{T-1}), σ_min = max(0.002, σ_0) as EDM uses for ADM's models
    The network only ever sees the process's own timesteps: each target is rounded to the step
    with the nearest λ (σ for karras), as EDM's iDDPM wrapper rounds σ; steps that round onto
    the same index are moved apart by one index, so exactly `count` network evaluations remain.
    """
    n = schedule.num_steps
    if not 1 <= count <= n:
        raise ValueError(f"cannot take {count} steps from a {n}-step process")
    if spacing == "time-uniform":
        return space_timesteps(n, count)
    if count == 1:
        return (n - 1,)
    alpha_bar = schedule.alpha_bar.cpu()
    i = torch.linspace(0, 1, count, dtype=_F64)
    if spacing == "logsnr":
        grid = log_snr(alpha_bar)
        targets = grid[-1] + i * (grid[0] - grid[-1])
    elif spacing == "karras":
        grid = edm_sigma(alpha_bar)
        hi, lo = min(sigma_max, float(grid[-1])), max(sigma_min, float(grid[0]))
        targets = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    nearest = sorted(int((grid - target).abs().argmin()) for target in targets)
    for k in range(1, count):  # keep them distinct: push crowded steps up ...
        nearest[k] = max(nearest[k], nearest[k - 1] + 1)
    nearest[-1] = min(nearest[-1], n - 1)
    for k in range(count - 2, -1, -1):  # ... and back down below the top
        nearest[k] = min(nearest[k], nearest[k + 1] - 1)
    return tuple(nearest)
