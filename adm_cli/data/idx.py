"""IDX files: the format of MNIST and Fashion-MNIST (LeCun et al.), plain or gzipped.

Layout (big-endian): two zero bytes, a type code (0x08 = uint8, ...), the number of
dimensions d, then d uint32 sizes, then the data in C order.  Images are ``0x00000803``
(N, rows, cols) uint8, labels ``0x00000801`` (N,) uint8.  A data folder holds
``{split}-images-idx3-ubyte[.gz]`` with its ``{split}-labels-idx1-ubyte[.gz]`` sibling, where
the split is ``train`` or ``t10k`` (the test set).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from .image_data import ArrayData, DataError, LabelRule, array_dataset
from .sample_format import one_line

__all__ = ["read_idx", "write_idx", "is_idx_images", "find_idx_images", "idx_labels_path", "open_idx"]

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip
_IMAGES_NAME = re.compile(r"^(?P<prefix>.+)-images[-.]idx3-ubyte(\.gz)?$")
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: unreadable IDX file ({one_line(e)})") from None


def read_idx(path: str | os.PathLike, *, magic: int | None = None) -> np.ndarray:
    """The array stored in IDX file ``path`` (``.gz`` is decompressed), in native byte order.

    ``magic``: the expected 4-byte magic number (e.g. ``0x00000803`` for images); a
    mismatch, unknown type code or wrong byte length is a `DataError`.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    (found,) = struct.unpack(">I", raw[:4])
    type_code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or type_code not in _TYPES or (magic is not None and found != magic):
        want = f"0x{magic:08x}" if magic is not None else "an IDX magic number"
        raise DataError(f"{path}: bad magic number 0x{found:08x} (expected {want})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: {len(raw) - header} data bytes for shape {shape} (expected {expected}; corrupt or truncated)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as IDX; gzipped if ``path`` ends in .gz."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    code = next(
        (c for c, t in _TYPES.items() if t.kind == array.dtype.kind and t.itemsize == array.dtype.itemsize), None
    )
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    data = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(_TYPES[code]).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def is_idx_images(path: Path) -> bool:
    """Whether ``path`` is named like an IDX images file (``*-images-idx3-ubyte[.gz]``)."""
    return _IMAGES_NAME.match(path.name) is not None


def idx_labels_path(images: Path) -> Path | None:
    """The ``*-labels-idx1-ubyte[.gz]`` sibling of an ``*-images-idx3-ubyte[.gz]`` file, if present."""
    match = _IMAGES_NAME.match(images.name)
    if match is None:
        return None
    for sep in ("-", "."):
        for gz in ("", ".gz"):
            candidate = images.with_name(f"{match['prefix']}-labels{sep}idx1-ubyte{gz}")
            if candidate.is_file():
                return candidate
    return None


def find_idx_images(folder: Path, split: str) -> Path | None:
    """The ``split`` images file of an IDX folder; None when ``folder`` holds no IDX images."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and _IMAGES_NAME.match(p.name))
    if not found:
        return None
    if split not in _SPLIT_PREFIXES:
        raise DataError(f"split must be train or test, got {split!r}")
    for want in _SPLIT_PREFIXES[split]:
        for p in sorted(found, key=lambda p: p.name.endswith(".gz")):  # plain files first
            prefix = _IMAGES_NAME.match(p.name)["prefix"]
            if prefix == want or prefix.endswith(f"-{want}"):
                return p
    names = ", ".join(p.name for p in found)
    raise DataError(f"{folder}: no {split} split among the IDX image files ({names})")


def open_idx(
    images_path: Path,
    *,
    image_size: int | None,
    channels: int | None,
    labels_rule: LabelRule,
    num_classes: int | None,
) -> ArrayData:
    """An IDX image file and its optional labels sibling as in-memory `ArrayData` (grayscale by default)."""
    images = read_idx(images_path, magic=0x00000803)
    labels_path = idx_labels_path(images_path)
    labels = None if labels_path is None or labels_rule == "none" else read_idx(labels_path, magic=0x00000801)
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    return array_dataset(
        images,
        labels,
        where=str(images_path),
        kind="IDX",
        image_size=image_size,
        channels=channels,
        labels_rule=labels_rule,
        num_classes=num_classes,
    )
