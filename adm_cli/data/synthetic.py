"""The built-in data set: procedurally drawn, class-labelled shapes (``adm train-diffusion synthetic``).

Image ``i`` is a pure function of ``(seed, i, image_size)``, drawn on demand in ``get``, so
any resolution from 8 pixels up works and no files are needed.  Its class is ``i % 8``
(exactly balanced):

====  ==========  =====================================================
0     disc        a filled circle
1     square      a rotated square
2     triangle    a rotated equilateral triangle
3     ring        an annulus
4     cross       a rotated plus sign
5     star        a rotated five-pointed star
6     bars        three horizontal bars (never rotated)
7     crescent    a disc with an offset disc cut out, rotated
====  ==========  =====================================================

Per image, from a counter-based hash of ``(seed, i)`` (no generator state, so the pixels do
not depend on which batch asks for them): the shape's radius (20-35 % of the side), its
centre (the shape stays mostly inside), its rotation, a saturated bright colour (HSV
saturation 0.65-1, value 0.75-1), and a background gradient between two dark, muted colours
(value 0.08-0.4) along a random direction.  Edges are antialiased: each shape is a signed
distance function, and the coverage of a pixel is ``clip(0.5 - distance in pixels, 0, 1)``.
Shapes, colours and positions all vary, yet a tiny model learns them in minutes.
"""

from __future__ import annotations

import math

import numpy as np

from .image_data import DataError, ImageData, LabelRule, rgb_to_gray

__all__ = ["SyntheticShapes", "CLASS_NAMES", "hash_uniforms", "render_shapes", "open_synthetic"]

CLASS_NAMES = ("disc", "square", "triangle", "ring", "cross", "star", "bars", "crescent")
MIN_SIZE = 8
DEFAULT_SYNTHETIC_SIZE = 20000  # images in ``synthetic`` without ``:N``
_PIXELS_PER_CHUNK = 1 << 20  # pixels drawn at once (bounds the float32 temporaries)
_NUM_PARAMS = 14

# ---- counter-based randomness


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014) on uint64 arrays; wraps modulo 2**64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniforms(seed: int, indices: np.ndarray, count: int) -> np.ndarray:
    """float64 (B, count) uniform in [0, 1), a pure function of ``(seed, index, column)``."""
    base = _splitmix64(np.full(1, seed % 2**64, np.uint64))
    keys = _splitmix64(base ^ np.asarray(indices, dtype=np.int64).astype(np.uint64))  # (B,)
    cols = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)  # (count,)
    bits = _splitmix64(keys[:, None] + cols[None, :])  # (B, count)
    return (bits >> np.uint64(11)).astype(np.float64) / 2.0**53


# ---- signed distance functions in shape-local units (radius about 1), negative inside


def _sd_box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx, qy = np.abs(x) - bx, np.abs(y) - by
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _sd_triangle(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Equilateral triangle of half-side ``r`` centred on its centroid (Quilez's sdEquilateralTriangle)."""
    k = math.sqrt(3.0)
    x, y = np.abs(x) - r, y + r / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -np.hypot(x, y) * np.sign(y)


def _sd_star5(x: np.ndarray, y: np.ndarray, r: float, rf: float) -> np.ndarray:
    """Five-pointed star of outer radius ``r``, inner/outer ratio ``rf`` (Quilez's sdStar5)."""
    k1x, k1y = 0.809016994375, -0.587785252292
    x = np.abs(x)
    for kx, ky in ((k1x, k1y), (-k1x, k1y)):  # fold into one sector
        t = 2 * np.maximum(kx * x + ky * y, 0)
        x, y = x - t * kx, y - t * ky
    x, y = np.abs(x), y - r
    bax, bay = -rf * k1y, rf * k1x - 1
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0, r)
    return np.hypot(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def _sd_shape(label: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to shape ``label`` (see `CLASS_NAMES`) at local coordinates (x, y)."""
    rho = np.hypot(x, y)
    if label == 0:  # disc
        return rho - 0.85
    if label == 1:  # square
        return _sd_box(x, y, 0.72, 0.72)
    if label == 2:  # triangle, circumradius 1
        return _sd_triangle(x, y, math.sqrt(3.0) / 2)
    if label == 3:  # ring
        return np.abs(rho - 0.68) - 0.26
    if label == 4:  # cross
        return np.minimum(_sd_box(x, y, 0.95, 0.28), _sd_box(x, y, 0.28, 0.95))
    if label == 5:  # star
        return _sd_star5(x, y, 1.0, 0.45)
    if label == 6:  # bars
        return np.minimum.reduce([_sd_box(x, y - yc, 0.85, 0.17) for yc in (-0.6, 0.0, 0.6)])
    if label == 7:  # crescent
        return np.maximum(rho - 0.85, 0.7 - np.hypot(x - 0.4, y))
    raise ValueError(f"no shape {label}")


# ---- drawing


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] -> RGB (..., 3) in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6) % 6  # (..., 3)
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def render_shapes(labels: np.ndarray, params: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 RGB (B, S, S, 3) images of shapes ``labels`` (B,) drawn with ``params`` (B, 14) uniforms."""
    u = params
    radius = 0.4 + 0.3 * u[:, 0]  # in half-sides: 20-35 % of the side
    centre = (2 * u[:, 1:3] - 1) * (1 - 0.85 * radius[:, None])  # (B, 2) as (x, y)
    angle = 2 * math.pi * u[:, 3]
    fg = _hsv_to_rgb(u[:, 4], 0.65 + 0.35 * u[:, 5], 0.75 + 0.25 * u[:, 6])  # (B, 3)
    bg1 = _hsv_to_rgb(u[:, 7], 0.2 + 0.5 * u[:, 8], 0.08 + 0.32 * u[:, 9])
    bg2 = _hsv_to_rgb(u[:, 10], 0.2 + 0.5 * u[:, 11], 0.08 + 0.32 * u[:, 12])
    grad_dir = 2 * math.pi * u[:, 13]

    coords = ((np.arange(image_size) + 0.5) / image_size * 2 - 1).astype(np.float32)  # pixel centres in [-1, 1]
    gx, gy = coords[None, None, :], coords[None, :, None]  # (1, 1, S) columns, (1, S, 1) rows

    def f32(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32)[:, None, None]  # (B,) -> (B, 1, 1)

    dx, dy = gx - f32(centre[:, 0]), gy - f32(centre[:, 1])  # (B, S, S)
    cos, sin = f32(np.cos(angle)), f32(np.sin(angle))
    x, y = (cos * dx + sin * dy) / f32(radius), (cos * dy - sin * dx) / f32(radius)
    upright_x, upright_y = dx / f32(radius), dy / f32(radius)

    dist = np.empty(x.shape, np.float32)  # (B, S, S) in local units
    for label in np.unique(labels):
        rows = labels == label
        lx, ly = (upright_x[rows], upright_y[rows]) if label == 6 else (x[rows], y[rows])
        dist[rows] = _sd_shape(int(label), lx, ly)
    coverage = np.clip(0.5 - dist * f32(radius * image_size / 2), 0, 1)[..., None]  # (B, S, S, 1)

    t = np.clip(0.5 + 0.35 * (f32(np.cos(grad_dir)) * gx + f32(np.sin(grad_dir)) * gy), 0, 1)[..., None]
    background = bg1[:, None, None, :] * (1 - t) + bg2[:, None, None, :] * t  # (B, S, S, 3)
    image = background * (1 - coverage) + fg[:, None, None, :] * coverage
    return np.rint(image * 255).astype(np.uint8)


class SyntheticShapes(ImageData):
    """``n`` procedurally drawn shape images (module docstring), labels ``index % 8``."""

    def __init__(
        self,
        n: int = DEFAULT_SYNTHETIC_SIZE,
        *,
        image_size: int = 32,
        channels: int = 3,
        seed: int = 0,
        labelled: bool = True,
        num_classes: int | None = None,
    ) -> None:
        if n < 1:
            raise DataError(f"synthetic data needs at least one image, got {n}")
        if image_size < MIN_SIZE:
            raise DataError(f"synthetic images need image size >= {MIN_SIZE}, got {image_size}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        names: tuple[str, ...] | None = None
        if labelled:
            top = min(n, len(CLASS_NAMES)) - 1
            if num_classes is not None and top >= num_classes:
                raise DataError(f"label {top} out of range for {num_classes} classes (synthetic data)")
            num_classes = top + 1 if num_classes is None else num_classes
            names = CLASS_NAMES[: top + 1] + tuple(str(i) for i in range(top + 1, num_classes))
        labels = f"{num_classes} classes" if labelled else "unlabelled"
        super().__init__(
            source=f"synthetic shapes ({n} images, {labels}, {image_size}x{image_size}x{channels}, seed {seed})",
            image_size=image_size,
            channels=channels,
            num_classes=num_classes if labelled else None,
            class_names=names,
        )
        self.n, self.seed, self.labelled = n, seed, labelled

    def __len__(self) -> int:
        return self.n

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        labels = indices % len(CLASS_NAMES)
        chunk = max(1, _PIXELS_PER_CHUNK // self.image_size**2)
        parts = [
            render_shapes(
                labels[i : i + chunk], hash_uniforms(self.seed, indices[i : i + chunk], _NUM_PARAMS), self.image_size
            )
            for i in range(0, len(indices), chunk)
        ]
        images = np.concatenate(parts) if parts else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        if self.channels == 1:
            images = rgb_to_gray(images)
        return images, labels if self.labelled else None


def open_synthetic(
    spec: str,
    *,
    seed: int,
    image_size: int | None,
    channels: int | None,
    labels_rule: LabelRule,
    num_classes: int | None,
) -> SyntheticShapes:
    """``synthetic`` or ``synthetic:N`` as a `SyntheticShapes` (32 px, RGB unless asked otherwise)."""
    count = spec.partition(":")[2]
    if count and not count.isdigit():
        raise DataError(f"bad synthetic data spec {spec!r}; use synthetic or synthetic:N with N a positive integer")
    if labels_rule in ("folder", "prefix"):
        raise DataError(f"{spec}: labels from {labels_rule} names apply to image folders only")
    return SyntheticShapes(
        int(count) if count else DEFAULT_SYNTHETIC_SIZE,
        image_size=32 if image_size is None else image_size,
        channels=3 if channels is None else channels,
        seed=seed,
        labelled=labels_rule != "none",
        num_classes=num_classes,
    )
