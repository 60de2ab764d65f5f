"""Implementation-independent deterministic weights for the golden-value tests.

Every parameter is filled from its own name alone (CRC32 of the name seeds a CPU
generator), so the reference implementation that produced `assets/golden/nn/*.npz`
and our implementation get identical weights as long as their state-dict names and
shapes agree.

Rule, for a parameter `name` of shape `shape`:

    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    len(shape) >= 2:          x / sqrt(prod(shape[1:]))   (fan-in scaled: convs, linears, embeddings)
    name ends with 'weight':  1 + 0.1 * x                  (norm scales)
    otherwise:                0.1 * x                      (biases)

Zero-initialised layers (output convs, residual out-convs, attention projections)
therefore get non-zero values and are exercised by the forward pass.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import torch


def deterministic_tensor(name: str, shape: Sequence[int]) -> torch.Tensor:
    """The deterministic float32 value of parameter `name` with shape `shape`."""
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) >= 2:
        return x / math.sqrt(math.prod(shape[1:]))
    if name.endswith("weight"):
        return 1.0 + 0.1 * x
    return 0.1 * x


def deterministic_state_dict(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Deterministic float32 tensors for every `name -> shape` in `shapes`."""
    return {name: deterministic_tensor(name, shape) for name, shape in shapes.items()}


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """`name -> shape` of a module's state dict (parameters and buffers)."""
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}
