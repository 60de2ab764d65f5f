"""Image conversions as guided-diffusion does them: model output -> uint8, grids, loading."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["to_uint8", "save_grid", "make_grid", "center_crop_arr", "load_image"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1], NCHW -> uint8 NHWC numpy (guided-diffusion's image_sample.py).

    ``((x + 1) * 127.5).clamp(0, 255).to(uint8)`` (truncation, not rounding), then NHWC.
    """
    import torch

    x = torch.as_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"to_uint8 expects a 4-D NCHW tensor, got shape {tuple(x.shape)}")
    x = ((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC array like torchvision.utils.make_grid.

    ``nrow`` is the number of images per row (default ceil(sqrt(N))); ``padding`` pixels
    of ``pad_value`` go around and between the tiles.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"make_grid expects uint8 NHWC images, got {images.dtype} {tuple(images.shape)}")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    ncol = min(n, nrow if nrow else math.ceil(math.sqrt(n)))
    if ncol <= 0:
        raise ValueError(f"nrow must be positive, got {nrow}")
    nrows = math.ceil(n / ncol)
    gh, gw = nrows * (h + padding) + padding, ncol * (w + padding) + padding
    grid = np.full((gh, gw, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None, padding: int = 2) -> Path:
    """Write a PNG (or any PIL format by extension) grid of uint8 NHWC images atomically."""
    path = Path(path)
    grid = make_grid(images, nrow=nrow, padding=padding)
    if grid.shape[2] == 1:
        img = Image.fromarray(grid[..., 0], mode="L")
    elif grid.shape[2] in (3, 4):
        img = Image.fromarray(grid)
    else:
        raise ValueError(f"save_grid supports 1, 3 or 4 channels, got {grid.shape[2]}")
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM preprocessing: shrink by exact halvings (box filter) while the short side is at least
    twice the target, scale the short side to `image_size` (bicubic), then crop the centre.

    Same result as guided-diffusion's `image_datasets.center_crop_arr` (checked in the tests).
    """
    image = pil_image
    while min(image.size) >= 2 * image_size:
        half = (image.width // 2, image.height // 2)
        image = image.resize(half, resample=Image.BOX)
    ratio = image_size / min(image.size)
    target = (round(image.width * ratio), round(image.height * ratio))
    pixels = np.array(image.resize(target, resample=Image.BICUBIC))
    top = (pixels.shape[0] - image_size) // 2
    left = (pixels.shape[1] - image_size) // 2
    return pixels[top : top + image_size, left : left + image_size]


def load_image(path: str | os.PathLike, size: int, channels: int = 3) -> np.ndarray:
    """Load an image as float32 CHW in [-1, 1], center-cropped and resized to ``size``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with Image.open(path) as im:
        im.load()
        im = im.convert("L" if channels == 1 else "RGB")
    arr = center_crop_arr(im, size)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr.astype(np.float32) / 127.5 - 1
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
