"""Optimisation pieces: AdamW, the learning-rate schedule, EMA and dynamic loss scaling.

All state that a resumed run needs (optimizer moments, EMA weights, loss scale) has a
`state_dict` of tensors and plain numbers, so it fits a `weights_only` checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from adm_cli.config import TrainConfig

__all__ = ["LossScaler", "ema_rate_at", "grad_norm", "learning_rate", "make_optimizer", "update_ema"]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every parameter (guided-diffusion: AdamW, weight decay 0 by default).

    The fused kernel (one pass over all tensors) where this torch has it for the parameters'
    device: on a busy 2-core CPU the per-tensor loop cost 5.6 s a step against 29 ms fused
    (bench/README.md, "CPU threads"); same update up to float32 rounding.
    """
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(step: int, config: TrainConfig) -> float:
    """lr at optimizer step `step` (0-based): linear warm-up, then constant / linear / cosine to 0.

    Linear annealing is guided-diffusion's `lr * (1 - step / lr_anneal_steps)`.
    """
    lr = config.lr
    if config.warmup_steps and step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return lr
    total = config.anneal_steps or 1
    frac = min(1.0, step / total)
    if config.lr_schedule == "linear":
        return lr * (1.0 - frac)
    return lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def ema_rate_at(rate: float, step: int, *, warmup: bool) -> float:
    """The EMA rate used after optimizer step `step`; with warm-up min(rate, (1+n)/(10+n))."""
    return min(rate, (1.0 + step) / (10.0 + step)) if warmup else rate


@torch.no_grad()
def update_ema(ema: list[Tensor], params: list[Tensor], rate: float) -> None:
    """ema ← rate·ema + (1 − rate)·θ, in place (guided-diffusion `update_ema`, same arithmetic)."""
    torch._foreach_mul_(ema, rate)
    torch._foreach_add_(ema, params, alpha=1.0 - rate)


@torch.no_grad()
def grad_norm(params: list[Tensor]) -> Tensor:
    """‖∇‖₂ over all gradients, float32 scalar (inf or nan when a gradient is not finite)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)


class LossScaler:
    """Dynamic loss scaling for fp16: the loss is multiplied by `scale` before backward; a step
    whose gradients are not finite is skipped and the scale halves; after `growth_interval`
    finite steps in a row it doubles (the scheme of torch.amp.GradScaler, kept here so its state
    is two numbers in the checkpoint). Disabled (scale 1, never changes) for fp32 and bf16."""

    def __init__(self, enabled: bool, *, init_scale: float = 2.0**16, growth_interval: int = 1000):
        self.enabled = enabled
        self.scale = init_scale if enabled else 1.0
        self.growth_interval = growth_interval
        self.good_steps = 0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale = min(self.scale * 2.0, 2.0**24)
            self.good_steps = 0

    def state_dict(self) -> dict[str, float | int | bool]:
        return {"enabled": self.enabled, "scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.enabled = bool(state["enabled"])
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
