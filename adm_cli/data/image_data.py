"""What every training-data reader builds on: the `ImageData` interface, in-memory arrays and
the shared checks.

`DataError` is what a reader raises for data it cannot use.  `array_dataset` checks in-memory images and
labels and brings them to the requested size and channels once (npz and IDX files use it);
`conform_images` does the same conversion for lazily read HDF5 blocks; `rgb_to_gray` matches
PIL's ``convert("L")`` bit for bit.  The readers themselves live in `adm_cli.data.datasets`
(folders, npz, HDF5, and `open_dataset`), `adm_cli.data.idx` and `adm_cli.data.synthetic`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

from .images import center_crop_arr

__all__ = [
    "DataError",
    "ImageData",
    "ArrayData",
    "LabelRule",
    "array_dataset",
    "check_labels",
    "conform_images",
    "rgb_to_gray",
]

LabelRule = Literal["auto", "folder", "prefix", "none"]


class DataError(ValueError):
    """Data that cannot be used; the message is one line naming the file and the problem."""


class ImageData(ABC):
    """A random-access set of square uint8 images with optional integer labels.

    Attributes: ``source`` (a description for logs), ``image_size`` (side in pixels),
    ``channels`` (1 or 3), ``num_classes`` (None when unlabelled) and ``class_names``
    (None, or one name per class).  Subclasses implement ``__len__`` and ``_get``.
    """

    source: str
    image_size: int
    channels: int
    num_classes: int | None
    class_names: tuple[str, ...] | None

    def __init__(
        self,
        *,
        source: str,
        image_size: int,
        channels: int,
        num_classes: int | None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        self.source = source
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.class_names = class_names

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`get` for checked int64 indices."""

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 images (B, H, W, C) at ``image_size`` and int64 labels (B,) or None."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise IndexError(f"indices must be a 1-D sequence of integers, got {idx.dtype} {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images: {int(idx.min())}..{int(idx.max())}")
        return self._get(idx.astype(np.int64, copy=False))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source}>"


class ArrayData(ImageData):
    """Images held in memory as uint8 (N, S, S, C), already at their final size."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        *,
        source: str,
        num_classes: int | None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(
            source=source,
            image_size=images.shape[1],
            channels=images.shape[3],
            num_classes=num_classes,
            class_names=class_names,
        )
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.images[indices], None if self.labels is None else self.labels[indices]


# ---- pixels


def rgb_to_gray(images: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> (..., 1) with PIL's ``convert("L")`` (ITU-R 601-2 luma, 16-bit fixed point)."""
    rgb = images.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def conform_images(images: np.ndarray, *, image_size: int, channels: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, image_size, image_size, channels): channels first
    (gray -> RGB by repetition, RGB -> gray as PIL "L"), then `center_crop_arr` per image
    where the size differs (as guided-diffusion's ImageDataset: convert, then crop)."""
    if images.shape[3] != channels:
        images = np.repeat(images, 3, axis=3) if channels == 3 else rgb_to_gray(images)
    if images.shape[1:3] == (image_size, image_size):
        return images
    out = np.empty((len(images), image_size, image_size, channels), np.uint8)
    for i, arr in enumerate(images):
        pil = Image.fromarray(arr[..., 0] if channels == 1 else arr)
        out[i] = center_crop_arr(pil, image_size).reshape(image_size, image_size, channels)
    return out


def _as_nhwc(images: np.ndarray, where: str) -> np.ndarray:
    """Check uint8 (N, H, W) or (N, H, W, C in {1, 3}); return it 4-D."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images have dtype {images.dtype}; expected uint8")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        hint = " (looks like NCHW; transpose to NHWC)" if images.ndim == 4 and images.shape[1] in (1, 3) else ""
        raise DataError(
            f"{where}: images have shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3{hint}"
        )
    return images


def _target_size(shape: tuple[int, ...], image_size: int | None, where: str) -> int:
    """``image_size`` or, when None, the side of square (N, S, S, C) images."""
    h, w = shape[1], shape[2]
    if image_size is not None:
        return image_size
    if h != w:
        raise DataError(f"{where}: images are {w}x{h}, not square; pass --image-size N to centre-crop and resize them")
    return h


# ---- labels


def check_labels(labels: np.ndarray, n: int, *, num_classes: int | None, where: str) -> tuple[np.ndarray, int]:
    """Labels as int64 (n,) and the class count (``num_classes`` or max + 1), or `DataError`."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {labels.dtype}; expected integers")
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{where}: {labels.size} labels of shape {labels.shape} for {n} images")
    if labels.min() < 0:
        raise DataError(f"{where}: negative label {int(labels.min())}")
    top = int(labels.max())
    if num_classes is not None and top >= num_classes:
        raise DataError(f"label {top} out of range for {num_classes} classes (file {where})")
    return labels.astype(np.int64, copy=False), top + 1 if num_classes is None else num_classes


def _describe(n: int, num_classes: int | None, how: str = "") -> str:
    classes = f"{num_classes} classes{how}" if num_classes is not None else "unlabelled"
    return f"{n} images, {classes}"


# ---- in-memory arrays (npz, IDX, synthetic)


def array_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    where: str,
    kind: str,
    image_size: int | None,
    channels: int | None,
    labels_rule: LabelRule,
    num_classes: int | None,
) -> ArrayData:
    """Check in-memory images/labels and convert them once to ``image_size`` / ``channels``."""
    images = _as_nhwc(images, where)
    if len(images) == 0:
        raise DataError(f"{where}: no images (N = 0)")
    if labels_rule in ("folder", "prefix"):
        raise DataError(f"{where}: labels from {labels_rule} names apply to image folders only")
    if labels is not None and labels_rule != "none":
        labels, num_classes = check_labels(labels, len(images), num_classes=num_classes, where=where)
    else:
        labels, num_classes = None, None
    size = _target_size(images.shape, image_size, where)
    channels = images.shape[3] if channels is None else channels
    native = f"{images.shape[2]}x{images.shape[1]}"
    images = conform_images(images, image_size=size, channels=channels)
    resized = f", resized from {native}" if native != f"{size}x{size}" else ""
    source = f"{kind} {where} ({_describe(len(images), num_classes)}, {size}x{size}x{channels}{resized})"
    return ArrayData(images, labels, source=source, num_classes=num_classes)
