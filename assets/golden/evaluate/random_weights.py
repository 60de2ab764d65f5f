"""Seeded random weights for the FID Inception-v3 (torchvision / pytorch-fid key names).

Numpy only: imported by the tests and by ``make_golden.py``. Every tensor is drawn from its own
generator ``np.random.default_rng([seed, zlib.crc32(name)])``, so the result does not depend on
the order of ``shapes``. The recipe keeps activations O(1) through all 94 conv layers (pool3
entries are O(0.1-1), see README.md); it is a test fixture, not a trained network.

Recipe by key suffix (float32):
  conv.weight (OIHW)   normal * sqrt(2 / (I*H*W))          (He init; ReLU follows every BN)
  bn.weight            uniform(0.8, 1.2)
  bn.bias              normal * 0.05
  bn.running_mean      normal * 0.05
  bn.running_var       uniform(0.8, 1.2)
  fc.weight            normal / sqrt(2048)
  fc.bias              normal * 0.1
  *num_batches_tracked skipped (absent from the output)
"""

from __future__ import annotations

import zlib

import numpy as np


def _draw(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if name.endswith(("bn.weight", "bn.running_var")):
        return rng.uniform(0.8, 1.2, size=shape)
    if name.endswith(("bn.bias", "bn.running_mean")):
        return rng.standard_normal(shape) * 0.05
    if name == "fc.weight" or name.endswith(".fc.weight"):
        return rng.standard_normal(shape) / np.sqrt(2048.0)
    if name == "fc.bias" or name.endswith(".fc.bias"):
        return rng.standard_normal(shape) * 0.1
    raise KeyError(f"no random-weight recipe for {name!r}")


def random_inception_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Return ``{name: float32 array}`` for every name in ``shapes`` except ``*num_batches_tracked``."""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[name] = np.ascontiguousarray(_draw(name, tuple(int(s) for s in shape), rng), dtype=np.float32)
    return out


def read_inception_keys(path) -> dict[str, tuple[int, ...]]:
    """Parse ``inception_keys.txt`` (``name d0,d1,...`` per line) into ``{name: shape}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, shape = line.split()
            shapes[name] = tuple(int(s) for s in shape.split(","))
    return shapes
