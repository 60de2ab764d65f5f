"""Reading sample files (``.npz``, ``.h5``, ``.npy``) and image folders, whole or in batches.

File layouts are documented in `adm_cli.data.sample_writer`; npz files written by
``np.savez`` / OpenAI's tools and h5 files with an ``images`` dataset are read too.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from numpy.lib import format as npy_format

from .sample_format import IMAGE_EXTENSIONS, SampleFileError, one_line, read_npy_header, sample_kind

__all__ = ["read_samples", "iter_sample_batches", "sample_info", "list_sample_images"]


def _source_kind(path: Path) -> str:
    """``"folder"``, ``"npy"``, ``"npz"`` or ``"h5"``; a missing path is a `SampleFileError`."""
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise SampleFileError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        return "npy"
    return sample_kind(path)


def _check_images_array(where: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype != np.uint8:
        raise SampleFileError(f"{where}: images have dtype {dtype}; expected uint8 NHWC")
    if len(shape) != 4:
        raise SampleFileError(f"{where}: images have shape {tuple(shape)}; expected 4-D NHWC (N, H, W, C)")
    if shape[3] not in (1, 3, 4):
        hint = " (looks like NCHW; transpose to NHWC)" if shape[1] in (1, 3, 4) else ""
        raise SampleFileError(f"{where}: images have shape {tuple(shape)}; expected NHWC with C in 1/3/4{hint}")


def _check_labels_array(where: str, shape: tuple[int, ...], dtype: np.dtype, n: int) -> None:
    if not np.issubdtype(dtype, np.integer):
        raise SampleFileError(f"{where}: labels have dtype {dtype}; expected int64")
    if tuple(shape) != (n,):
        raise SampleFileError(f"{where}: labels have shape {tuple(shape)}; expected ({n},) to match the images")


# ---- image folders


def list_sample_images(path: Path) -> list[Path]:
    """The images of a sample folder, in the order they are read (sorted names, not recursive)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SampleFileError(f"{path}: no {'/'.join(IMAGE_EXTENSIONS)} images in folder")
    return files


def _load_folder_images(files: list[Path], mode: str | None, size: tuple[int, int] | None):
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                if mode is None:
                    mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                if size is None:
                    size = im.size
                if im.size != size:
                    raise SampleFileError(
                        f"{p}: size {im.size[0]}x{im.size[1]} differs from {size[0]}x{size[1]} of the other images"
                    )
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise SampleFileError(f"{p}: unreadable image ({one_line(e)})") from None
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out), mode, size


# ---- npy


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SampleFileError(f"{path}: corrupt or truncated npy ({one_line(e)})") from None
    _check_images_array(str(path), arr.shape, arr.dtype)
    return arr


# ---- npz


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path, "r")
    except FileNotFoundError:
        raise SampleFileError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise SampleFileError(f"{path}: not a readable npz (corrupt or truncated: {one_line(e)})") from None


def _npz_member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return zf.getinfo(f"{name}.npy")
    except KeyError:
        return None


def _is_stored(info: zipfile.ZipInfo) -> bool:
    """Whether the member's bytes lie uncompressed and unencrypted in the zip file."""
    return info.compress_type == zipfile.ZIP_STORED and not (info.flag_bits & 0x1)


def _zip_member_data_offset(fh, info: zipfile.ZipInfo) -> int:
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise SampleFileError(f"bad local zip header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _npz_labels(zf: zipfile.ZipFile, path: Path, n: int) -> np.ndarray | None:
    info = _npz_member(zf, "arr_1")
    if info is None:
        return None
    try:
        with zf.open(info) as f:
            labels = npy_format.read_array(f, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, SyntaxError) as e:
        raise SampleFileError(f"{path}: arr_1 is corrupt or truncated ({one_line(e)})") from None
    _check_labels_array(f"{path}: arr_1", labels.shape, labels.dtype, n)
    return labels.astype(np.int64, copy=False)


def _open_npz_images(zf: zipfile.ZipFile, path: Path):
    """``(info, shape, fortran, header length)`` of a checked ``arr_0`` member."""
    info = _npz_member(zf, "arr_0")
    if info is None:
        names = ", ".join(zf.namelist()) or "none"
        raise SampleFileError(f"{path}: no arr_0 in npz (members: {names})")
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = read_npy_header(f)
            hdr_len = f.tell()
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, SyntaxError) as e:
        raise SampleFileError(f"{path}: {info.filename} has a corrupt npy header ({one_line(e)})") from None
    shape = tuple(int(s) for s in shape)
    _check_images_array(f"{path}: arr_0", shape, dtype)
    nbytes = math.prod(shape)  # uint8
    if info.compress_type == zipfile.ZIP_STORED and info.file_size < hdr_len + nbytes:
        raise SampleFileError(
            f"{path}: arr_0 is truncated ({info.file_size - hdr_len} of {nbytes} data bytes present)"
        )
    return info, shape, bool(fortran), hdr_len


# ---- h5


def _open_h5(path: Path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise SampleFileError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise SampleFileError(f"{path}: not a readable HDF5 file (corrupt or truncated: {one_line(e)})") from None
    if "images" not in f:
        names = ", ".join(f.keys()) or "none"
        f.close()
        raise SampleFileError(f"{path}: no 'images' dataset (datasets: {names})")
    ds = f["images"]
    try:
        _check_images_array(f"{path}: images", ds.shape, ds.dtype)
        labels = f.get("labels")
        if labels is not None:
            _check_labels_array(f"{path}: labels", labels.shape, labels.dtype, ds.shape[0])
    except SampleFileError:
        f.close()
        raise
    return f, ds, labels


def _h5_read(path: Path, what: str, fn):
    try:
        return fn()
    except (OSError, RuntimeError, KeyError) as e:
        raise SampleFileError(f"{path}: {what} unreadable (corrupt or truncated: {one_line(e)})") from None


# ---- public API


def read_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a sample file: ``(images uint8 (N, H, W, C), labels int64 (N,) or None)``.

    npz with an uncompressed arr_0 (what `SampleWriter` / ``np.savez`` write) is returned
    as a read-only ``np.memmap`` into the zip; compressed npz, h5 and image folders
    (sorted PNG/JPG, labels None) are loaded into memory.  A ``.npy`` file is
    memory-mapped as images.  Use `iter_sample_batches` to stream instead.
    """
    path = Path(path)
    kind = _source_kind(path)
    if kind == "folder":
        images, _, _ = _load_folder_images(list_sample_images(path), None, None)
        return images, None
    if kind == "npy":
        return _load_npy(path), None
    if kind == "h5":
        f, ds, labels = _open_h5(path)
        with f:
            images = _h5_read(path, "images", lambda: ds[...])
            lab = None if labels is None else _h5_read(path, "labels", lambda: labels[...]).astype(np.int64, copy=False)
        return images, lab
    with _open_zip(path) as zf:
        info, shape, fortran, hdr_len = _open_npz_images(zf, path)
        labels = _npz_labels(zf, path, shape[0])
        if _is_stored(info):
            with open(path, "rb") as fh:
                offset = _zip_member_data_offset(fh, info) + hdr_len
            if os.path.getsize(path) < offset + math.prod(shape):
                raise SampleFileError(f"{path}: arr_0 is truncated")
            if math.prod(shape) == 0:
                return np.zeros(shape, np.uint8), labels
            order = "F" if fortran else "C"
            return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape, order=order), labels
        try:
            with zf.open(info) as f:
                images = npy_format.read_array(f, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
            raise SampleFileError(f"{path}: arr_0 is corrupt or truncated ({one_line(e)})") from None
        return images, labels


def sample_info(path: str | os.PathLike) -> tuple[int, tuple[int, int, int], bool]:
    """``(N, (H, W, C), has_labels)`` of a sample file or image folder without reading pixels."""
    path = Path(path)
    kind = _source_kind(path)
    if kind == "folder":
        files = list_sample_images(path)
        first, _, _ = _load_folder_images(files[:1], None, None)
        return len(files), tuple(first.shape[1:]), False  # type: ignore[return-value]
    if kind == "npy":
        images = _load_npy(path)
        return images.shape[0], tuple(images.shape[1:]), False  # type: ignore[return-value]
    if kind == "h5":
        f, ds, labels = _open_h5(path)
        with f:
            return ds.shape[0], tuple(ds.shape[1:]), labels is not None
    with _open_zip(path) as zf:
        _, shape, _, _ = _open_npz_images(zf, path)
        return shape[0], tuple(shape[1:]), _npz_member(zf, "arr_1") is not None  # type: ignore[return-value]


def read_labels(path: str | os.PathLike) -> np.ndarray | None:
    """The labels of a sample file (int64 (N,)) or None, without reading any image."""
    path = Path(path)
    kind = _source_kind(path)
    if kind in ("folder", "npy"):
        return None
    if kind == "h5":
        f, _, labels = _open_h5(path)
        with f:
            return None if labels is None else _h5_read(path, "labels", lambda: labels[...]).astype(np.int64, copy=False)
    with _open_zip(path) as zf:
        _, shape, _, _ = _open_npz_images(zf, path)
        return _npz_labels(zf, path, shape[0])


def iter_sample_batches(
    path: str | os.PathLike, batch_size: int, *, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(images uint8 (b, H, W, C), labels int64 (b,) or None)`` in order, ``b <= batch_size``,
    from sample ``start`` on (to resume work).

    Memory stays bounded by one batch (plus the labels): npz ``arr_0`` is read row by
    row from the zip member stream after parsing its npy header (stored or deflated; a
    stored member seeks to ``start``), h5 is sliced, image folders are decoded batch by batch.
    """
    if int(batch_size) <= 0:
        raise SampleFileError(f"batch_size must be positive, got {batch_size}")
    if int(start) < 0:
        raise SampleFileError(f"start must be >= 0, got {start}")
    batch_size, start = int(batch_size), int(start)
    path = Path(path)
    kind = _source_kind(path)
    if kind == "folder":
        files = list_sample_images(path)
        mode = size = None
        if start and files[start:]:  # fix mode and size from the first image, as a full pass would
            _, mode, size = _load_folder_images(files[:1], None, None)
        for i in range(start, len(files), batch_size):
            images, mode, size = _load_folder_images(files[i : i + batch_size], mode, size)
            yield images, None
        return
    if kind == "npy":
        images = _load_npy(path)
        for i in range(start, images.shape[0], batch_size):
            yield np.array(images[i : i + batch_size]), None
        return
    if kind == "h5":
        f, ds, labels = _open_h5(path)
        with f:
            n = ds.shape[0]
            for i in range(start, n, batch_size):
                j = min(n, i + batch_size)
                imgs = _h5_read(path, "images", lambda: ds[i:j])
                if labels is None:
                    yield imgs, None
                else:
                    yield imgs, _h5_read(path, "labels", lambda: labels[i:j]).astype(np.int64, copy=False)
        return
    with _open_zip(path) as zf:
        info, shape, fortran, _ = _open_npz_images(zf, path)
        labels = _npz_labels(zf, path, shape[0])
        n = shape[0]
        if fortran:  # rows are not contiguous; cannot stream
            images, _ = read_samples(path)
            for i in range(start, n, batch_size):
                j = i + batch_size
                yield np.ascontiguousarray(images[i:j]), None if labels is None else labels[i:j]
            return
        row = math.prod(shape[1:])
        stored = _is_stored(info)
        try:
            # stored members are read straight from the file (one copy); others via zipfile
            with (open(path, "rb") if stored else zf.open(info)) as f:
                if stored:
                    f.seek(_zip_member_data_offset(f, info))
                read_npy_header(f)
                skip = min(start, n) * row
                if stored:
                    f.seek(skip, os.SEEK_CUR)
                else:
                    while skip > 0:  # a deflated stream can only be read through
                        got = len(f.read(min(skip, _SKIP_CHUNK)))
                        if not got:
                            raise SampleFileError(f"{path}: arr_0 is truncated before sample {start} of {n}")
                        skip -= got
                for i in range(start, n, batch_size):
                    b = min(batch_size, n - i)
                    want = b * row
                    buf = _read_exact(f, want)
                    if len(buf) != want:
                        at = i + len(buf) // max(row, 1)
                        raise SampleFileError(f"{path}: arr_0 is truncated at sample {at} of {n}")
                    images = np.frombuffer(buf, dtype=np.uint8).reshape(b, *shape[1:])
                    yield images, None if labels is None else labels[i : i + b]
        except SampleFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise SampleFileError(f"{path}: arr_0 is corrupt or truncated ({one_line(e)})") from None


_SKIP_CHUNK = 1 << 24


def _read_exact(f, n: int) -> memoryview:
    """Read up to ``n`` bytes into a fresh (writable) buffer; shorter only at end of stream."""
    buf = memoryview(bytearray(n))
    got = 0
    while got < n:
        k = f.readinto(buf[got:])
        if not k:
            break
        got += k
    return buf[:got]
