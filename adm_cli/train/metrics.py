"""Running means of per-image training terms, overall and per t quartile (guided-diffusion logs
`loss_q0..3`), summed on the tensors' device so a training step never waits for the host; one
transfer (and, under torchrun, one all_reduce) when the interval is flushed."""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import Tensor

from adm_cli.backend import Dist

__all__ = ["Meter"]


class Meter:
    def __init__(self, num_timesteps: int | None):
        self.T = num_timesteps
        # name -> (2, 5) float64: [sum, count] x [all, q0, q1, q2, q3]
        self._acc: dict[str, Tensor] = {}

    def _slot(self, name: str, device: torch.device) -> Tensor:
        if name not in self._acc:
            self._acc[name] = torch.zeros(2, 5, dtype=torch.float64, device=device)
        return self._acc[name]

    def add(self, terms: dict[str, Tensor], t: Tensor | None = None, *, prefix: str = "") -> None:
        """Add per-image values (B,); with t, also to the quartile of each image's t."""
        for name, value in terms.items():
            v = value.detach().double().reshape(-1)
            acc = self._slot(prefix + name, v.device)
            acc[0, 0] += v.sum()
            acc[1, 0] += v.numel()
            if t is not None and self.T:
                bucket = (t.detach().reshape(-1) * 4 // self.T).clamp(0, 3) + 1  # (B,) in 1..4
                acc[0].index_add_(0, bucket, v)
                acc[1].index_add_(0, bucket, torch.ones_like(v))

    def add_scalar(self, name: str, value: float | Tensor) -> None:
        self.add({name: torch.as_tensor(value, dtype=torch.float64).reshape(1)})

    def flush(self, dist: Dist, device: torch.device) -> dict[str, float]:
        """Means since the last flush, over all processes: `name` and `name_q0..3` (when seen)."""
        names = sorted(self._acc)
        if dist.world_size > 1:
            # Ranks may have seen different names (e.g. a skipped step): agree on the union first.
            gathered: list[list[str]] = [[] for _ in range(dist.world_size)]
            tdist.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))
        # Terms live on the network's device; scalars such as grad_norm may be on the CPU.
        zero = torch.zeros(2, 5, dtype=torch.float64)
        packed = torch.stack([self._acc.get(n, zero).to(device) for n in names]) if names else None
        if packed is not None and dist.world_size > 1:
            tdist.all_reduce(packed)
        self._acc = {}
        if packed is None:
            return {}
        packed = packed.cpu()  # (N, 2, 5)
        out: dict[str, float] = {}
        for name, (sums, counts) in zip(names, packed):
            for j, key in enumerate([name] + [f"{name}_q{q}" for q in range(4)]):
                if counts[j] > 0:
                    out[key] = float(sums[j] / counts[j])
        return out
