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

This module holds the folder, npz and HDF5 readers and `open_dataset`, which dispatches to
them and to `adm_cli.data.idx` / `adm_cli.data.synthetic`; all of them build on
`adm_cli.data.image_data` (`ImageData`, `DataError`, the shared checks).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from PIL import Image

from .idx import find_idx_images, is_idx_images, open_idx
from .image_data import (
    ArrayData,
    DataError,
    ImageData,
    LabelRule,
    _as_nhwc,
    _describe,
    _target_size,
    array_dataset,
    check_labels,
    conform_images,
    rgb_to_gray,
)
from .images import center_crop_arr
from .sample_format import one_line
from .synthetic import open_synthetic

# DataError, ImageData, ArrayData, rgb_to_gray and conform_images live in `image_data` (the
# layer below every reader) and are re-exported here, with the readers, as the training-data API.
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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
_FORMS = "synthetic[:N], an image folder, an IDX folder or *-images-idx3-ubyte[.gz] file, .npz, .h5/.hdf5"


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


# ---- npz


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


def _pad_names(names: tuple[str, ...], num_classes: int) -> tuple[str, ...]:
    """Class names for labels 0..num_classes-1; classes absent from the data are named by number."""
    return names + tuple(str(i) for i in range(len(names), num_classes))


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
        return open_synthetic(text, seed=seed, **options)
    path = Path(text)
    if not path.exists():
        raise DataError(f"data not found: {path}")
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
