"""Building a `Denoiser` around the stand-in networks of the diffusion tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import Denoiser, Guidance, Schedule


def denoiser(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: Schedule,
    config: DiffusionConfig,
    *,
    cond_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    mode: str = "score",
    clip_denoised: bool = True,
    threshold: float | None = None,
) -> Denoiser:
    """A denoiser over `model_fn(x_t, model_t)`; `cond_fn(x_t, model_t)` is a fixed (already scaled)
    classifier gradient, applied as a mean or score shift."""
    return Denoiser(
        lambda x, t, y: model_fn(x, t),
        schedule=schedule,
        config=config,
        guidance=Guidance(classifier_scale=1.0, classifier_mode=mode) if cond_fn is not None else Guidance(),  # type: ignore[arg-type]
        grad_fn=None if cond_fn is None else (lambda x, t, y: cond_fn(x, t)),
        clip_denoised=clip_denoised,
        threshold=threshold,
    )
