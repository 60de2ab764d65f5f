"""Which t each training image gets: uniform, or importance sampling by the loss's second moment
(IDDPM Sec. 3.3, Eq. 17: p_t ∝ √E[L_t²], with weights 1 / (T p_t) keeping the estimate unbiased).

A sampler draws for the *global* batch from the step's generator, so every process of a
distributed run draws the same t and each takes its slice; the loss-aware history is updated with
the losses of the whole global batch, identically on every process.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

TimestepSampling = Literal["uniform", "loss-second-moment"]

__all__ = ["LossSecondMomentSampler", "TimestepSampler", "TimestepSampling", "UniformSampler", "make_timestep_sampler"]


class TimestepSampler(Protocol):
    num_steps: int
    observes_losses: bool  # whether `update` uses the losses (else the loop need not gather them)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(t, weights), both (batch,), on the generator's device."""
        ...

    def update(self, t: Tensor, losses: Tensor) -> None: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


def _draw(p: Tensor, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """t ~ p by inverse CDF on uniforms from `generator`, and weights 1 / (T p_t)."""
    device = generator.device
    p = p.to(device=device, dtype=torch.float64)
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    t = torch.searchsorted(torch.cumsum(p, 0), u * p.sum(), right=True).clamp_(max=p.numel() - 1)
    weights = 1.0 / (p.numel() * p[t] / p.sum())
    return t, weights.float()


class UniformSampler:
    """t ~ U{0, ..., T-1}, weight 1."""

    observes_losses = False

    def __init__(self, num_steps: int):
        self.num_steps = num_steps

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        t = torch.randint(self.num_steps, (batch,), generator=generator, device=generator.device)
        return t, torch.ones(batch, device=generator.device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


class LossSecondMomentSampler:
    """p_t ∝ √E[L_t²] over the last `history` losses of each t, mixed with `uniform_prob` of the
    uniform distribution; uniform until every t has a full history (IDDPM Sec. 3.3, guided-diffusion
    `LossSecondMomentResampler`, history 10, uniform_prob 0.001)."""

    observes_losses = True

    def __init__(self, num_steps: int, *, history: int = 10, uniform_prob: float = 0.001):
        self.num_steps = num_steps
        self.history = history
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(num_steps, history, dtype=torch.float64)
        self.counts = torch.zeros(num_steps, dtype=torch.int64)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def weights(self) -> Tensor:
        """The distribution p over t, (T,) float64, summing to 1."""
        if not self.warmed_up:
            return torch.full((self.num_steps,), 1.0 / self.num_steps, dtype=torch.float64)
        p = torch.sqrt((self.losses**2).mean(dim=1))
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.num_steps

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return _draw(self.weights(), batch, generator)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Append each (t, loss) in batch order; a full history drops its oldest entry."""
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            n = int(self.counts[ti])
            if n == self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()
                self.losses[ti, -1] = li
            else:
                self.losses[ti, n] = li
                self.counts[ti] = n + 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.losses.copy_(state["losses"])
        self.counts.copy_(state["counts"])


def make_timestep_sampler(kind: TimestepSampling, num_steps: int) -> TimestepSampler:
    if kind == "uniform":
        return UniformSampler(num_steps)
    if kind == "loss-second-moment":
        return LossSecondMomentSampler(num_steps)
    raise ValueError(f"unknown timestep sampler {kind!r} (uniform or loss-second-moment)")
