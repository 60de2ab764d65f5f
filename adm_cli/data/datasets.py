"""Training data for ``adm train-diffusion DATA`` / ``adm train-classifier DATA``.

`open_dataset(spec)` returns an `ImageData`: ``len(data)`` images of ``image_size`` x
``image_size`` pixels with ``channels`` channels, optional integer labels, and
``data.get(indices) -> (uint8 (B, H, W, C), int64 (B,) | None)``.  Accepted specs:

==========================  ==================================================================
``synthetic[:N]``           the built-in shapes (`adm_cli.data.synthetic`), N images (20000)
a folder of images          png/jpg/jpeg/gif/bmp/webp, recursive, decoded lazily in ``get``;
                            labels from first-level sub-folders or ``CLASS_rest.png`` names
a folder of IDX files       MNIST layout (``train-images-idx3-ubyte[.gz]`` + labels), ``split``
``*-images-idx3-ubyte[.gz]``  one IDX image file, labels from its ``-labels-idx1-`` sibling
``.npz``                    ``arr_0`` uint8 (N, H, W[, C]), optional ``arr_1`` labels
``.h5`` / ``.hdf5``         ``images`` (or ``arr_0``) uint8 NHWC, optional ``labels`` (``arr_1``),
                            read lazily
==========================  ==================================================================

Images are brought to ``image_size`` with guided-diffusion's `center_crop_arr` (box halvings,
bicubic resize, centre crop), the preprocessing of its ``ImageDataset``; in-memory sources are
converted once at open time, folders and HDF5 files in ``get``.
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image

from .images import center_crop_arr
from .sample_format import one_line

__all__ = [
    "DataError",
    "ImageData",
    "ArrayData",
    "ImageFolder",
    "HDF5Data",
    "Subset",
    "IMAGE_SUFFIXES",
    "open_dataset",
    "split_holdout",
    "rgb_to_gray",
    "conform_images",
]

T = TypeVar("T")
LabelRule = Literal["auto", "folder", "prefix", "none"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
DEFAULT_SYNTHETIC_SIZE = 20000
_FORMS = "synthetic[:N], an image folder, an IDX folder or *-images-idx3-ubyte[.gz] file, .npz, .h5/.hdf5"


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


class ImageFolder(ImageData):
    """Image files decoded in ``get``: PIL, RGB (or L), then `center_crop_arr` (guided-diffusion)."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray | None,
        *,
        source: str,
        image_size: int,
        channels: int,
        num_classes: int | None,
        class_names: tuple[str, ...] | None,
    ) -> None:
        super().__init__(
            source=source, image_size=image_size, channels=channels, num_classes=num_classes, class_names=class_names
        )
        self.files = list(files)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im.load()
                im = im.convert("L" if self.channels == 1 else "RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: unreadable image ({one_line(e)})") from None
        arr = center_crop_arr(im, self.image_size)
        return arr[..., None] if arr.ndim == 2 else arr

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        shape = (0, self.image_size, self.image_size, self.channels)
        images = np.stack([self._load(self.files[i]) for i in indices]) if len(indices) else np.zeros(shape, np.uint8)
        return images, None if self.labels is None else self.labels[indices]


class HDF5Data(ImageData):
    """An HDF5 images dataset read lazily (the file is opened per ``get``; h5py serialises threads)."""

    def __init__(
        self,
        path: Path,
        key: str,
        n: int,
        labels: np.ndarray | None,
        *,
        source: str,
        image_size: int,
        channels: int,
        num_classes: int | None,
    ) -> None:
        super().__init__(source=source, image_size=image_size, channels=channels, num_classes=num_classes)
        self.path, self.key, self.labels = path, key, labels
        self._n = n

    def __len__(self) -> int:
        return self._n

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        # h5py fancy indexing wants increasing unique indices: read those, then reorder.
        unique, inverse = np.unique(indices, return_inverse=True)
        raw = _h5_call(self.path, lambda f: f[self.key][unique] if len(unique) else f[self.key][:0])
        images = conform_images(_as_nhwc(raw, str(self.path)), image_size=self.image_size, channels=self.channels)
        return images[inverse.reshape(-1)], None if self.labels is None else self.labels[indices]


class Subset(ImageData):
    """A view of ``data`` restricted to ``indices`` (no image data copied)."""

    def __init__(self, data: ImageData, indices: np.ndarray, *, source: str) -> None:
        super().__init__(
            source=source,
            image_size=data.image_size,
            channels=data.channels,
            num_classes=data.num_classes,
            class_names=data.class_names,
        )
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self.data.get(self.indices[indices])


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


def _pad_names(names: tuple[str, ...], num_classes: int) -> tuple[str, ...]:
    """Class names for labels 0..num_classes-1; classes absent from the data are named by number."""
    return names + tuple(str(i) for i in range(len(names), num_classes))


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


def _open_npz(path: Path, **options) -> ArrayData:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not a zip archive of arrays")
        with z:
            members = z.files
            images = z["arr_0"] if "arr_0" in members else None
            labels = z["arr_1"] if "arr_1" in members else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable npz ({one_line(e)})") from None
    if images is None:
        raise DataError(f"{path}: no arr_0 in npz (members: {', '.join(members) or 'none'})")
    return array_dataset(images, labels, where=str(path), kind="npz", **options)


# ---- HDF5


def _h5_call(path: Path, fn: Callable[[Any], T]) -> T:
    """``fn(file)`` on ``path`` opened read-only; h5py errors become `DataError`."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return fn(f)
    except DataError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise DataError(f"{path}: unreadable HDF5 file ({one_line(e)})") from None


def _open_h5(
    path: Path,
    *,
    image_size: int | None,
    channels: int | None,
    labels_rule: LabelRule,
    num_classes: int | None,
) -> HDF5Data:
    def header(f: Any) -> tuple[str, tuple[int, ...], np.dtype, np.ndarray | None]:
        key = next((k for k in ("images", "arr_0") if k in f), None)
        if key is None:
            raise DataError(f"{path}: no 'images' or 'arr_0' dataset (datasets: {', '.join(f.keys()) or 'none'})")
        lkey = next((k for k in ("labels", "arr_1") if k in f), None)
        ds = f[key]
        return key, ds.shape, ds.dtype, None if lkey is None else f[lkey][()]

    key, shape, dtype, labels = _h5_call(path, header)
    _as_nhwc(np.empty((0,) + tuple(shape[1:]), dtype), str(path))  # dtype / shape check only
    if shape[0] == 0:
        raise DataError(f"{path}: no images (N = 0)")
    if labels_rule in ("folder", "prefix"):
        raise DataError(f"{path}: labels from {labels_rule} names apply to image folders only")
    if labels is not None and labels_rule != "none":
        labels, num_classes = check_labels(labels, shape[0], num_classes=num_classes, where=str(path))
    else:
        labels, num_classes = None, None
    size = _target_size(shape, image_size, str(path))
    channels = (shape[3] if len(shape) == 4 else 1) if channels is None else channels
    source = f"HDF5 {path} ({_describe(shape[0], num_classes)}, {size}x{size}x{channels})"
    return HDF5Data(
        path, key, shape[0], labels, source=source, image_size=size, channels=channels, num_classes=num_classes
    )


# ---- image folders


def list_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted; hidden files and folders skipped)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(folder, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files)


def folder_labels(
    root: Path, files: Sequence[Path], rule: LabelRule
) -> tuple[np.ndarray | None, tuple[str, ...] | None, str]:
    """(labels, sorted class names, how) for ``files`` by ``rule``.

    ``folder``: the first-level sub-folder of ``root``; ``prefix``: the file-name text before
    the first ``_`` (guided-diffusion's ImageDataset convention); ``auto``: the first rule
    that applies to every file and yields at least two classes, else unlabelled.
    """
    parts = [f.relative_to(root).parts for f in files]
    by_folder = [p[0] if len(p) > 1 else None for p in parts]
    by_prefix = [p[-1].split("_", 1)[0] if "_" in p[-1] else None for p in parts]
    candidates = {"folder": by_folder, "prefix": by_prefix}
    if rule == "none":
        return None, None, ""
    if rule in candidates:
        names = candidates[rule]
        if None in names:
            bad = files[names.index(None)]
            need = "lie in a sub-folder" if rule == "folder" else "have a '_' in its name"
            raise DataError(f"{bad}: labels by {rule} need every image to {need}")
    else:
        usable = [r for r, names in candidates.items() if None not in names and len(set(names)) >= 2]
        if not usable:
            return None, None, ""
        rule, names = usable[0], candidates[usable[0]]
    classes = tuple(sorted(set(names)))
    index = {c: i for i, c in enumerate(classes)}
    how = " from sub-folders" if rule == "folder" else " from file-name prefixes"
    return np.array([index[c] for c in names], dtype=np.int64), classes, how


def _image_header(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, or `DataError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not an image PIL can read ({one_line(e)})") from None


def _open_folder(
    root: Path,
    *,
    image_size: int | None,
    channels: int | None,
    labels_rule: LabelRule,
    num_classes: int | None,
) -> ImageFolder:
    files = list_image_files(root)
    if not files:
        raise DataError(f"no images found in {root} ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    sizes = [_image_header(f) for f in files]
    if image_size is None:
        first = sizes[0]
        other = next((i for i, s in enumerate(sizes) if s != first), None)
        if other is not None:
            (w0, h0), (w1, h1) = first, sizes[other]
            raise DataError(
                f"images have mixed sizes ({w0}x{h0} in {files[0].relative_to(root)}, {w1}x{h1} in "
                f"{files[other].relative_to(root)}); pass --image-size N to centre-crop and resize them"
            )
        image_size = _target_size((len(files), first[1], first[0]), None, str(files[0]))
    labels, names, how = folder_labels(root, files, labels_rule)
    if labels is not None:
        labels, num_classes = check_labels(labels, len(files), num_classes=num_classes, where=str(root))
        names = _pad_names(names, num_classes)
    else:
        num_classes = None
    channels = 3 if channels is None else channels
    source = f"folder {root} ({_describe(len(files), num_classes, how)}, {image_size}x{image_size}x{channels})"
    return ImageFolder(
        files,
        labels,
        source=source,
        image_size=image_size,
        channels=channels,
        num_classes=num_classes,
        class_names=names,
    )


# ---- entry points


def open_dataset(
    spec: str | os.PathLike,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    labels: LabelRule = "auto",
    split: Literal["train", "test"] = "train",
    num_classes: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Open training data from ``spec`` (see the module docstring for the accepted forms).

    ``image_size`` / ``channels``: resize (centre crop) / convert to these (default: the
    data's own; 32 and RGB for synthetic, RGB for folders).  ``labels``: how a folder is
    labelled (``none`` drops labels of any source).  ``split``: which IDX split of a folder.
    ``num_classes``: the class count the labels must fit (default max label + 1); ignored
    for unlabelled data.  ``seed``: the synthetic set's seed.
    """
    if image_size is not None and image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if labels not in ("auto", "folder", "prefix", "none"):
        raise DataError(f"labels must be auto, folder, prefix or none, got {labels!r}")
    options = {"image_size": image_size, "channels": channels, "labels_rule": labels, "num_classes": num_classes}
    text = os.fspath(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        from .synthetic import open_synthetic  # synthetic.py builds on this module

        return open_synthetic(text, seed=seed, **options)
    path = Path(text)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    from .idx import find_idx_images, is_idx_images, open_idx  # idx.py builds on this module

    if path.is_dir():
        idx_images = find_idx_images(path, split)
        if idx_images is not None:
            return open_idx(idx_images, **options)
        return _open_folder(path, **options)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _open_npz(path, **options)
    if suffix in (".h5", ".hdf5"):
        return _open_h5(path, **options)
    if is_idx_images(path):
        return open_idx(path, **options)
    raise DataError(f"{path}: unsupported data file; use {_FORMS}")


def split_holdout(data: ImageData, fraction: float, *, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Deterministic (train, validation) views; validation gets max(1, round(fraction * n)) images."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    n = len(data)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise DataError(f"{data.source}: too few images ({n}) to hold out {fraction:g} for validation")
    order = np.random.default_rng([seed, n]).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (
        Subset(data, train, source=f"{data.source}, training part ({len(train)} images)"),
        Subset(data, val, source=f"{data.source}, validation part ({n_val} images)"),
    )
