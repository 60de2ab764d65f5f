"""The feature networks `adm evaluate` measures with: Inception-v3 (the paper's metrics) or an
adm classifier at t = 0 (a domain feature space, e.g. for 28×28 grayscale data)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from adm_cli.checkpoint import file_digest
from adm_cli.data.datasets import rgb_to_gray

from .features import exact_fp32
from .inception import INPUT_SIZE, POOL_DIM, SPATIAL_DIM, FIDInception, fold_batchnorm
from .weights import WeightsFile

__all__ = ["InceptionFeatures", "ClassifierFeatures", "to_rgb", "clean_resize"]

Resize = Literal["tf1", "clean"]


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 with C in 1/3/4 → (N, H, W, 3): gray repeated, alpha dropped."""
    c = images.shape[-1]
    if c == 3:
        return images
    if c == 1:
        return np.repeat(images, 3, axis=-1)
    if c == 4:
        return images[..., :3]
    raise ValueError(f"images have {c} channels; expected 1, 3 or 4")


def clean_resize(images: np.ndarray) -> np.ndarray:
    """clean-fid's "clean" resize to 299×299 (PIL bicubic on float32, per channel): NOT the ADM path."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (INPUT_SIZE, INPUT_SIZE))
    return np.stack([resize(im) for im in images]).astype(np.float32)  # (N, 299, 299, 3)


class InceptionFeatures:
    """``pool`` (N, 2048) and ``spatial`` (N, 2023) of `FIDInception`, in exact float32."""

    def __init__(
        self, net: FIDInception, weights_id: str, *, device: str | torch.device = "cpu", resize: Resize = "tf1",
        weights: WeightsFile | None = None,
    ):
        if resize not in ("tf1", "clean"):
            raise ValueError(f"resize must be tf1 or clean, got {resize!r}")
        self.device = torch.device(device)
        # BatchNorm folded into the convs; channels-last on the CPU, where oneDNN's convolutions
        # want it (bench/README.md "Inception feature extraction": together 1.xx× the plain network)
        self.net = fold_batchnorm(net).to(device).eval()
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)
        self.resize = resize
        self.id = f"{weights_id}-{resize}"
        self.dims = {"pool": POOL_DIM, "spatial": SPATIAL_DIM}
        self.weights = weights

    @property
    def has_logits(self) -> bool:
        """False for weights that stop at pool_3: no Inception Score."""
        return self.net.has_logits

    def describe(self) -> dict:
        """The network for a reproducibility record: id, weights file and SHA-256, what it is, resize."""
        known = self.weights.known if self.weights is not None else None
        return {
            "id": self.id,
            "weights": str(self.weights.path) if self.weights is not None else None,
            "weights_sha256": self.weights.sha256 if self.weights is not None else None,
            "known_as": known.name if known is not None else None,
            "logits": self.has_logits,
            "resize": self.resize,
        }

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        rgb = to_rgb(images)
        if self.resize == "clean":
            rgb = clean_resize(rgb)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        with exact_fp32():
            pixels = self.net.preprocess(x, resize=self.resize == "tf1").contiguous(memory_format=self.memory_format)
            out = self.net.features(pixels)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    @torch.no_grad()
    def class_probabilities(self, pool: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """softmax(pool_3 · W) without the bias (1008 classes), float32, in batches of 512 as the evaluator."""
        if not self.has_logits:
            raise ValueError("these Inception weights have no logits (the network stops at pool_3)")
        out = []
        with exact_fp32():
            for i in range(0, len(pool), batch_size):
                p = torch.from_numpy(np.ascontiguousarray(pool[i : i + batch_size], dtype=np.float32)).to(self.device)
                out.append(torch.softmax(self.net.logits_unbiased(p), dim=1).cpu().numpy())
        return np.concatenate(out, 0) if out else np.zeros((0, self.net.fc.out_features), np.float32)


class ClassifierFeatures:
    """``pool``: an adm classifier's pooled representation of clean images (t = 0)."""

    def __init__(self, loaded, *, device: str | torch.device = "cpu"):
        self.model = loaded.model.to(device).eval()
        self.config = loaded.config
        self.device = torch.device(device)
        self.sha256 = file_digest(loaded.path)
        self.path = loaded.path
        self.id = f"classifier-{self.sha256[:16]}"
        with torch.no_grad():
            probe = torch.zeros(1, self.config.in_channels, self.config.image_size, self.config.image_size, device=self.device)
            dim = self.model.features(probe, torch.zeros(1, dtype=torch.long, device=self.device)).shape[1]
        self.dims = {"pool": int(dim)}

    def describe(self) -> dict:
        """The network for a reproducibility record: the classifier checkpoint and its SHA-256."""
        return {"id": self.id, "classifier": str(self.path), "classifier_sha256": self.sha256}

    def check_shape(self, name: str, shape: tuple[int, int, int]) -> None:
        size = self.config.image_size
        if shape[:2] != (size, size):
            raise ValueError(f"{name}: images are {shape[0]}x{shape[1]} but the feature classifier takes {size}x{size}")

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        c = self.config.in_channels
        if images.shape[-1] == 4:
            images = images[..., :3]
        if c == 3:
            images = to_rgb(images)
        elif images.shape[-1] == 3:
            images = rgb_to_gray(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        t = torch.zeros(len(x), dtype=torch.long, device=self.device)
        with exact_fp32():
            return {"pool": self.model.features(x, t).float().cpu().numpy()}
