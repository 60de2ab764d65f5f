"""What to sample: sampler names, step counts and network evaluations, and `SampleOptions`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from adm_cli.diffusion import SPACINGS, Schedule, space_timesteps


Sampler = Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc", "heun"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc", "heun")
ODE_SOLVERS = ("dpm++2m", "dpm++3m", "unipc", "heun")  # deterministic: no --eta
ClassMode = Literal["random", "balanced"]
CLASS_MODES: tuple[str, ...] = get_args(ClassMode)
MIN_NFE = {"ddpm": 1, "ddim": 1, "dpm++2m": 2, "dpm++3m": 3, "unipc": 2, "heun": 3}
DEFAULT_SOLVER_NFE = 20


class GenerateError(ValueError):
    """Options that do not fit the model (one-line message)."""


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Schedule steps that cost at most `nfe` network evaluations (Heun: 2K - 1 for K steps)."""
    if sampler not in SAMPLERS:
        raise GenerateError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if nfe < MIN_NFE[sampler]:
        raise GenerateError(f"--nfe {nfe} is too small for {sampler}: it needs at least {MIN_NFE[sampler]}")
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations per image for `steps` schedule steps (a CFG evaluation is one doubled batch)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def default_spacing(sampler: str, guided: bool) -> str | None:
    """The step choice the solvers' authors recommend: EDM's ρ = 7 σ steps for Heun; for
    DPM-Solver++ and UniPC uniform time under guidance (their guided-sampling recipe) and uniform
    log-SNR without (their recommendation for unguided pixel models); None (guided-diffusion's
    respacing) for DDPM and DDIM."""
    if sampler == "heun":
        return "karras"
    if sampler in ODE_SOLVERS:
        return "time-uniform" if guided else "logsnr"
    return None


def check_class_choice(classes: str, class_label: int | None) -> None:
    """``--classes`` is a known mode and not ``balanced`` together with a fixed ``--class``."""
    if classes not in CLASS_MODES:
        raise GenerateError(f"--classes must be one of {', '.join(CLASS_MODES)}, got {classes!r}")
    if classes == "balanced" and class_label is not None:
        raise GenerateError(f"--classes balanced spreads the images over every class; drop it or --class {class_label}")


@dataclass(frozen=True)
class SampleOptions:
    """What to sample; everything that changes the images is part of the resume fingerprint."""

    num: int
    sampler: Sampler = "ddpm"
    respacing: str | None = None  # "250", "ddim25", "90,60,60,20,20"; with `spacing`: the step count; None: every step
    spacing: str | None = None  # time-uniform | logsnr | karras (solver step choice), or None
    eta: float = 0.0
    guidance_scale: float = 0.0  # classifier guidance s
    cfg_scale: float = 0.0  # classifier-free guidance w (diffusers' guidance_scale = 1 + w)
    guidance_interval: tuple[float, float] | None = None  # original timesteps where guidance acts
    dynamic_threshold: float | None = None  # quantile ratio (0.995) of DPM-Solver++'s thresholding
    class_label: int | None = None  # every image's class; None: as `classes` says (class-conditional or guided models)
    classes: ClassMode = "random"  # random: from image i's generator; balanced: num/K of each class (`balanced_labels`)
    seed: int = 0
    clip_denoised: bool = True
    batch_size: int = 16  # does not change the images

    def __post_init__(self) -> None:
        if self.num <= 0:
            raise GenerateError(f"--num must be positive, got {self.num}")
        if self.batch_size <= 0:
            raise GenerateError(f"--batch-size must be positive, got {self.batch_size}")
        if self.sampler not in SAMPLERS:
            raise GenerateError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        for name, value in (("--eta", self.eta), ("--guidance", self.guidance_scale), ("--cfg-scale", self.cfg_scale)):
            if not math.isfinite(value):
                raise GenerateError(f"{name} must be a finite number, got {value}")
        if self.eta < 0:
            raise GenerateError(f"--eta must be >= 0, got {self.eta}")
        if self.eta != 0 and self.sampler != "ddim":
            raise GenerateError(f"--eta applies to DDIM only; {self.sampler} is {'ancestral' if self.sampler == 'ddpm' else 'deterministic'}")
        if self.spacing is not None:
            if self.spacing not in SPACINGS:
                raise GenerateError(f"unknown spacing {self.spacing!r}; expected one of {', '.join(SPACINGS)}")
            if self.respacing is None or not self.respacing.isdigit():
                raise GenerateError(f"--spacing {self.spacing} needs a step count (--steps or --nfe), not --respacing")
        if self.dynamic_threshold is not None:
            if not 0 < self.dynamic_threshold <= 1:
                raise GenerateError(f"the dynamic-threshold ratio must lie in (0, 1], got {self.dynamic_threshold}")
            if not self.clip_denoised:
                raise GenerateError("--dynamic-threshold replaces clipping; drop --no-clip")
        if self.guidance_interval is not None and not self.guidance_interval[0] <= self.guidance_interval[1]:
            raise GenerateError(f"--guidance-interval needs LO <= HI, got {self.guidance_interval}")
        if self.seed < 0:
            raise GenerateError(f"--seed must be >= 0, got {self.seed}")
        check_class_choice(self.classes, self.class_label)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 0 or self.cfg_scale != 0


def ddim_spacing(k: int, steps: int) -> str:
    """`ddimK` (a constant stride from t = 0, as guided-diffusion's DDIM runs use) when some
    stride gives exactly K steps, else K evenly spaced steps."""
    try:
        space_timesteps(steps, f"ddim{k}")
        return f"ddim{k}"
    except ValueError:
        return str(k)


def describe_steps(options: SampleOptions, schedule: Schedule) -> str:
    """e.g. 'dpm++2m, 20 steps (logsnr), 20 network evaluations per image'."""
    how = f" ({options.spacing})" if options.spacing else (f" ({options.respacing})" if options.respacing else "")
    text = f"{options.sampler}, {schedule.num_steps} steps{how}, {nfe_of(options.sampler, schedule.num_steps)} network evaluations per image"
    if options.cfg_scale:
        text += f" (each one forward of a doubled batch), classifier-free guidance {options.cfg_scale:g}"
    return text
