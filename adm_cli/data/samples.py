"""Streamed, atomic, resumable sample files (``.npz`` / ``.h5``) and their readers.

Formats
-------
``.npz``  ``arr_0``: uint8 (N, H, W, C), C order, a plain ``arr_0.npy`` member stored
          uncompressed (ZIP_STORED, zip64) with a version-1.0 npy header, exactly what
          OpenAI's evaluator streams; ``arr_1``: int64 (N,) labels (omitted when the
          writer was opened with ``has_labels=False``, as guided-diffusion does for
          unconditional models).
``.h5``   datasets ``images`` (N, H, W, C) uint8, chunked and resizable, ``labels`` (N,)
          int64; file attributes: every top-level ``meta`` key (dicts / lists as JSON
          strings, e.g. ``config``), ``meta_json`` (the whole dict), ``total``,
          ``image_shape``, ``fingerprint``, ``done``, ``complete``.

Writing (`open_sample_writer`)
------------------------------
Samples are written block by block as they are produced; nothing holds more than one
block in memory.  Progress lives in a work area next to the output:

* npz: directory ``OUT.partial/`` with ``meta.json`` and one pair of shards per block,
  ``lab_<start>.npy`` then ``img_<start>.npy`` (each written to a temporary name,
  fsynced and ``os.replace``d, so a shard is either complete or absent; shards are
  still verified on resume and a truncated / unreadable / non-contiguous shard and all
  after it are discarded and re-done).  `finalize` streams the shards into
  ``OUT.tmp`` and renames it to ``OUT``, then removes the work area.
* h5: the file ``OUT.partial.h5`` itself; after each block the data is flushed, then
  attribute ``done`` is updated and flushed.  `finalize` renames it to ``OUT``.

Re-running the same command resumes from the stored contiguous prefix
``0 .. done-1``.  The stored ``total``, ``image_shape``, ``has_labels`` and
``meta["fingerprint"]`` must match the new run, otherwise `SampleFileError` is raised
instead of mixing outputs.  A finished ``OUT`` is never overwritten unless
``overwrite=True`` (and even then only by the atomic rename at `finalize`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.lib import format as npy_format

__all__ = [
    "SampleFileError",
    "SampleWriter",
    "open_sample_writer",
    "read_samples",
    "iter_sample_batches",
    "sample_info",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_NPZ_EXT = (".npz",)
_H5_EXT = (".h5", ".hdf5")
_FORMAT_VERSION = 1
_COPY_CHUNK = 16 << 20  # bytes copied at a time when streaming shards into the zip


class SampleFileError(ValueError):
    """A sample file / work area that cannot be read or written as asked (one-line message)."""


# --------------------------------------------------------------------------- helpers


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in _NPZ_EXT:
        return "npz"
    if ext in _H5_EXT:
        return "h5"
    raise SampleFileError(f"{path}: unsupported sample file extension {ext or '(none)'!r}; use .npz or .h5")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def _write_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        npy_format.write_array(f, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(f)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(f)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(f)
    # numpy's private reader handles 3.0 (utf8 header); fall back to it if available
    reader = getattr(npy_format, "_read_array_header", None)
    if reader is None:  # pragma: no cover
        raise ValueError(f"unsupported npy format version {version}")
    return reader(f, version)


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


# --------------------------------------------------------------------------- writers


class SampleWriter:
    """Base class; get one from `open_sample_writer`.  Use as a context manager.

    Leaving the ``with`` block normally with all ``total`` samples written finalizes;
    leaving it with an exception, or early, just closes and keeps the work area so the
    same command resumes later.
    """

    path: Path
    total: int
    image_shape: tuple[int, int, int]
    has_labels: bool
    meta: dict

    def __init__(self, path: Path, total: int, image_shape, meta: dict, has_labels: bool, overwrite: bool):
        self.path = path
        self._overwrite = bool(overwrite)
        self.total = int(total)
        self.image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.meta = dict(meta)
        self.has_labels = bool(has_labels)
        self._done = 0
        self._closed = False
        self._finalized = False

    # -- public API
    @property
    def done(self) -> int:
        """Number of samples already stored: indices ``0 .. done-1``."""
        return self._done

    @property
    def remaining(self) -> int:
        return self.total - self._done

    @property
    def finalized(self) -> bool:
        return self._finalized

    def write(self, images: np.ndarray, labels: np.ndarray | None = None, start: int | None = None) -> int:
        """Append images[i] / labels[i] as samples ``start + i``; ``start`` must equal `done`.

        Returns the new `done`.
        """
        if self._closed:
            raise SampleFileError(f"{self.path}: writer is closed")
        start = self._done if start is None else int(start)
        if start != self._done:
            raise SampleFileError(
                f"{self.path}: write at index {start} but {self._done} samples are stored; "
                f"blocks must be contiguous (next start is {self._done})"
            )
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise SampleFileError(f"{self.path}: images must be uint8 NHWC, got dtype {images.dtype}")
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise SampleFileError(
                f"{self.path}: images have shape {tuple(images.shape)}; expected (n, {', '.join(map(str, self.image_shape))})"
            )
        n = images.shape[0]
        if self.has_labels:
            if labels is None:
                raise SampleFileError(f"{self.path}: labels are required (writer opened with has_labels=True)")
            labels = np.asarray(labels)
            if labels.shape != (n,) or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
                raise SampleFileError(
                    f"{self.path}: labels must be int64 of shape ({n},), got {labels.dtype} {tuple(labels.shape)}"
                )
            labels = labels.astype(np.int64, copy=False)
        elif labels is not None:
            raise SampleFileError(f"{self.path}: labels given but writer was opened with has_labels=False")
        if start + n > self.total:
            raise SampleFileError(f"{self.path}: writing {n} samples at {start} exceeds total {self.total}")
        if n == 0:
            return self._done
        self._write_block(np.ascontiguousarray(images), labels, start)
        self._done = start + n
        return self._done

    def finalize(self) -> Path:
        """Produce the final file atomically (requires ``done == total``); returns its path."""
        if self._finalized:
            return self.path
        if self._closed:
            raise SampleFileError(f"{self.path}: writer is closed")
        if self._done != self.total:
            raise SampleFileError(f"{self.path}: cannot finalize with {self._done}/{self.total} samples written")
        self._finalize()
        self._finalized = True
        self._closed = True
        return self.path

    def close(self) -> None:
        """Release file handles without finalizing (the work area stays for resuming)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed and self._done == self.total:
            self.finalize()
        else:
            self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- to implement
    def _write_block(self, images: np.ndarray, labels: np.ndarray | None, start: int) -> None:
        raise NotImplementedError

    def _finalize(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- shared
    def _identity(self) -> dict:
        return {
            "total": self.total,
            "image_shape": list(self.image_shape),
            "has_labels": self.has_labels,
            "fingerprint": self.meta.get("fingerprint"),
        }

    def _check_identity(self, work: Path, stored: dict) -> None:
        mine = self._identity()
        diffs = [k for k in mine if _norm(stored.get(k)) != _norm(mine[k])]
        if diffs:
            parts = ", ".join(f"{k}: stored {stored.get(k)!r} vs now {mine[k]!r}" for k in diffs)
            raise SampleFileError(
                f"{work} holds progress from a different run ({parts}); "
                f"delete it or pass --no-resume to start over"
            )


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


# ---- npz


_SHARD_RE = re.compile(r"^img_(\d{12})\.npy$")


class _NpzSampleWriter(SampleWriter):
    def __init__(self, path: Path, total, image_shape, meta, has_labels, overwrite: bool, resume: bool):
        super().__init__(path, total, image_shape, meta, has_labels, overwrite)
        self.work = path.with_name(path.name + ".partial")
        self._shards: list[tuple[int, int]] = []  # (start, count)
        self._lock_fd: int | None = None
        if self.work.exists() and not resume:
            if self.work.is_dir():
                self._lock()  # refuse to discard a work area another process is using
                self._close()
                shutil.rmtree(self.work)
            else:
                self.work.unlink()
        if self.work.exists():
            if not self.work.is_dir():
                raise SampleFileError(f"{self.work} exists and is not a directory; remove it")
            meta_file = self.work / "meta.json"
            try:
                stored = json.loads(meta_file.read_text())
                if not isinstance(stored, dict) or stored.get("format_version") != _FORMAT_VERSION:
                    raise ValueError("bad meta")
            except (OSError, ValueError):
                warnings.warn(f"{self.work}: no readable meta.json; discarding the work area and starting over")
                shutil.rmtree(self.work)
                stored = None
            if stored is not None:
                self._check_identity(self.work, stored)
                self._lock()
                self._scan()
        if not self.work.exists():
            self.work.mkdir(parents=True)
            self._lock()
            record = {"format_version": _FORMAT_VERSION, **self._identity(), "meta": self.meta}
            tmp = self.work / "meta.json.tmp"
            tmp.write_text(_dumps(record))
            os.replace(tmp, self.work / "meta.json")
            _fsync_dir(self.work)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return
        fd = os.open(str(self.work / "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise SampleFileError(f"{self.work} is in use by another running process") from None
            raise
        self._lock_fd = fd

    def _close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _shard_paths(self, start: int) -> tuple[Path, Path]:
        return self.work / f"img_{start:012d}.npy", self.work / f"lab_{start:012d}.npy"

    def _valid_shard(self, start: int) -> int | None:
        """Number of samples in the shard at ``start`` if it is complete and consistent."""
        img, lab = self._shard_paths(start)
        try:
            with open(img, "rb") as f:
                shape, fortran, dtype = _npy_header(f)
                off = f.tell()
            if fortran or dtype != np.uint8 or len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
                return None
            n = int(shape[0])
            if n <= 0 or img.stat().st_size != off + n * math.prod(self.image_shape):
                return None
            if self.has_labels:
                with open(lab, "rb") as f:
                    lshape, lfortran, ldtype = _npy_header(f)
                    loff = f.tell()
                if ldtype != np.int64 or tuple(lshape) != (n,) or lab.stat().st_size != loff + 8 * n:
                    return None
            return n
        except (OSError, ValueError, EOFError, SyntaxError):
            return None

    def _scan(self) -> None:
        starts = []
        for p in self.work.iterdir():
            m = _SHARD_RE.match(p.name)
            if m:
                starts.append(int(m.group(1)))
            elif p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # interrupted shard write
        starts.sort()
        done = 0
        bad_from = None
        for s in starts:
            n = self._valid_shard(s) if s == done else None
            if n is None or done + n > self.total:
                bad_from = s
                break
            self._shards.append((s, n))
            done += n
        # drop invalid shards, anything after a gap, and orphan label shards
        keep = {s for s, _ in self._shards}
        dropped = 0
        for p in list(self.work.iterdir()):
            m = re.match(r"^(img|lab)_(\d{12})\.npy$", p.name)
            if m and int(m.group(2)) not in keep:
                p.unlink(missing_ok=True)
                dropped += m.group(1) == "img"
        if bad_from is not None:
            warnings.warn(
                f"{self.work}: discarded {dropped} incomplete or inconsistent shard(s) from sample {bad_from}; "
                f"resuming at {done}"
            )
        self._done = done

    def _write_block(self, images, labels, start) -> None:
        img, lab = self._shard_paths(start)
        if self.has_labels:
            _write_npy_atomic(lab, labels)
        _write_npy_atomic(img, images)  # the image shard commits the block
        _fsync_dir(self.work)
        self._shards.append((start, images.shape[0]))

    def _finalize(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        n_total = self.total
        try:
            with open(tmp, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                self._stream_member(
                    zf, "arr_0.npy", np.uint8, (n_total, *self.image_shape), (self._shard_paths(s)[0] for s, _ in self._shards)
                )
                if self.has_labels:
                    self._stream_member(
                        zf, "arr_1.npy", np.int64, (n_total,), (self._shard_paths(s)[1] for s, _ in self._shards)
                    )
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if self.path.exists() and not self._overwrite:
                raise SampleFileError(f"{self.path} exists; pass --overwrite to replace it")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)
        self._close()
        shutil.rmtree(self.work, ignore_errors=True)

    @staticmethod
    def _stream_member(zf: zipfile.ZipFile, name: str, dtype, shape, shard_files) -> None:
        header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
        with zf.open(name, "w", force_zip64=True) as out:
            npy_format.write_array_header_1_0(out, header)
            for shard in shard_files:
                with open(shard, "rb") as f:
                    _npy_header(f)
                    while True:
                        buf = f.read(_COPY_CHUNK)
                        if not buf:
                            break
                        out.write(buf)


# ---- h5


def _h5_attr_value(v: Any) -> Any:
    if v is None:
        return "null"
    if isinstance(v, (str, bool, int, float, np.integer, np.floating, np.bool_)):
        return v
    if isinstance(v, np.ndarray) and v.dtype.kind in "iufb":
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, np.integer)) for x in v):
        return np.asarray(v, dtype=np.int64)
    return _dumps(v)


_H5_ACTIVE: set[str] = set()  # work files open for writing in this process (HDF5 shares them silently)


class _H5SampleWriter(SampleWriter):
    def __init__(self, path: Path, total, image_shape, meta, has_labels, overwrite: bool, resume: bool):
        import h5py

        super().__init__(path, total, image_shape, meta, has_labels, overwrite)
        self.work = path.with_name(path.name + ".partial.h5")
        self._f = None
        self._key = os.path.realpath(self.work)
        if self._key in _H5_ACTIVE:
            self._closed = True
            raise SampleFileError(f"{self.work} is in use by another writer in this process")
        _H5_ACTIVE.add(self._key)
        try:
            self._open(h5py, resume)
        except BaseException:
            _H5_ACTIVE.discard(self._key)
            self._closed = True
            raise

    def _open(self, h5py, resume: bool) -> None:
        if self.work.exists() and not resume:
            try:
                h5py.File(self.work, "r").close()  # refuse to discard a file another process is using
            except (OSError, ValueError) as e:
                if _is_lock_error(e):
                    raise SampleFileError(f"{self.work} is in use by another running process") from None
            self.work.unlink()
        if self.work.exists():
            try:
                f = h5py.File(self.work, "r+")
            except (OSError, ValueError) as e:
                if _is_lock_error(e):
                    raise SampleFileError(f"{self.work} is in use by another running process") from None
                warnings.warn(f"{self.work}: unreadable ({_one_line(e)}); discarding it and starting over")
                self.work.unlink()
            else:
                try:
                    stored = json.loads(f.attrs["identity_json"])
                    done = int(f.attrs["done"])
                    images, labels = f["images"], f.get("labels")
                except Exception as e:
                    f.close()
                    warnings.warn(f"{self.work}: incomplete work file ({_one_line(e)}); starting over")
                    self.work.unlink()
                else:
                    try:
                        self._check_identity(self.work, stored)
                    except SampleFileError:
                        f.close()
                        raise
                    done = max(0, min(done, images.shape[0], labels.shape[0] if labels is not None else done, self.total))
                    if images.shape[0] != done:
                        images.resize(done, axis=0)
                    if labels is not None and labels.shape[0] != done:
                        labels.resize(done, axis=0)
                    f.attrs["done"] = done
                    f.flush()
                    self._f = f
                    self._done = done
        if self._f is None:
            self._create()

    def _create(self) -> None:
        import h5py

        try:
            f = h5py.File(self.work, "w")
        except OSError as e:
            if _is_lock_error(e):
                raise SampleFileError(f"{self.work} is in use by another running process") from None
            raise
        h, w, c = self.image_shape
        rows = max(1, min(self.total or 1, (1 << 20) // max(1, h * w * c)))  # ~1 MiB chunks
        f.create_dataset("images", shape=(0, h, w, c), maxshape=(None, h, w, c), dtype=np.uint8, chunks=(rows, h, w, c))
        if self.has_labels:
            f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        for k, v in self.meta.items():
            if k not in ("done", "complete", "identity_json", "meta_json"):
                f.attrs[k] = _h5_attr_value(v)
        f.attrs["meta_json"] = _dumps(self.meta)
        f.attrs["identity_json"] = _dumps(self._identity())
        f.attrs["total"] = self.total
        f.attrs["image_shape"] = np.asarray(self.image_shape, dtype=np.int64)
        f.attrs["format_version"] = _FORMAT_VERSION
        f.attrs["complete"] = False
        f.attrs["done"] = 0
        f.flush()
        self._f = f

    def _write_block(self, images, labels, start) -> None:
        f = self._f
        n = images.shape[0]
        f["images"].resize(start + n, axis=0)
        f["images"][start : start + n] = images
        if self.has_labels:
            f["labels"].resize(start + n, axis=0)
            f["labels"][start : start + n] = labels
        f.flush()
        f.attrs["done"] = start + n
        f.flush()

    def _finalize(self) -> None:
        self._f.attrs["done"] = self.total
        self._f.attrs["complete"] = True
        self._f.flush()
        self._f.close()
        self._f = None
        with open(self.work, "rb+") as fh:
            os.fsync(fh.fileno())
        if self.path.exists() and not self._overwrite:
            raise SampleFileError(f"{self.path} exists; pass --overwrite to replace it")
        os.replace(self.work, self.path)
        _fsync_dir(self.path.parent)
        _H5_ACTIVE.discard(self._key)

    def _close(self) -> None:
        try:
            if self._f is not None:
                self._f.close()
        finally:
            self._f = None
            _H5_ACTIVE.discard(self._key)


def _is_lock_error(e: BaseException) -> bool:
    s = str(e).lower()
    return "lock" in s and ("unable" in s or "already" in s or "resource temporarily" in s)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def open_sample_writer(
    path: str | os.PathLike,
    *,
    total: int,
    image_shape: tuple[int, int, int],
    meta: dict | None = None,
    resume: bool = True,
    overwrite: bool = False,
    has_labels: bool = True,
) -> SampleWriter:
    """Open (or resume) an incremental writer for ``total`` samples of ``image_shape`` (H, W, C).

    ``meta`` is stored with the file (command line, config, seeds, ...); its
    ``"fingerprint"`` entry (e.g. checkpoint hash + sampler options + seed) must match
    the one stored in an existing work area for it to be resumed.  ``resume=False``
    discards an existing work area.  A finished ``path`` raises `SampleFileError`
    unless ``overwrite=True`` (then it is replaced only when the new file is complete).
    """
    path = Path(path)
    kind = _kind(path)
    meta = dict(meta or {})
    _dumps(meta)  # fail early on unserialisable meta
    if int(total) < 0:
        raise SampleFileError(f"{path}: total must be >= 0, got {total}")
    if len(tuple(image_shape)) != 3 or any(int(s) <= 0 for s in image_shape):
        raise SampleFileError(f"{path}: image_shape must be (H, W, C) with positive sizes, got {tuple(image_shape)}")
    if path.exists() and not overwrite:
        raise SampleFileError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise SampleFileError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = _NpzSampleWriter if kind == "npz" else _H5SampleWriter
    return cls(path, total, image_shape, meta, has_labels, overwrite, resume)


# --------------------------------------------------------------------------- readers


def _zip_member_data_offset(fh, info: zipfile.ZipInfo) -> int:
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise SampleFileError(f"bad local zip header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path, "r")
    except FileNotFoundError:
        raise SampleFileError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise SampleFileError(f"{path}: not a readable npz (corrupt or truncated: {_one_line(e)})") from None


def _npz_member(zf: zipfile.ZipFile, path: Path, name: str) -> zipfile.ZipInfo | None:
    try:
        return zf.getinfo(f"{name}.npy")
    except KeyError:
        return None


def _npz_header(zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo):
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = _npy_header(f)
            return tuple(int(s) for s in shape), bool(fortran), dtype, f.tell() if info.compress_type == zipfile.ZIP_STORED else None
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, SyntaxError) as e:
        raise SampleFileError(f"{path}: {info.filename} has a corrupt npy header ({_one_line(e)})") from None


def _npz_labels(zf: zipfile.ZipFile, path: Path, n: int) -> np.ndarray | None:
    info = _npz_member(zf, path, "arr_1")
    if info is None:
        return None
    try:
        with zf.open(info) as f:
            labels = npy_format.read_array(f, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, SyntaxError) as e:
        raise SampleFileError(f"{path}: arr_1 is corrupt or truncated ({_one_line(e)})") from None
    _check_labels_array(f"{path}: arr_1", labels.shape, labels.dtype, n)
    return labels.astype(np.int64, copy=False)


def _open_npz_images(zf: zipfile.ZipFile, path: Path):
    info = _npz_member(zf, path, "arr_0")
    if info is None:
        names = ", ".join(zf.namelist()) or "none"
        raise SampleFileError(f"{path}: no arr_0 in npz (members: {names})")
    shape, fortran, dtype, hdr_len = _npz_header(zf, path, info)
    _check_images_array(f"{path}: arr_0", shape, dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if info.compress_type == zipfile.ZIP_STORED and hdr_len is not None and info.file_size < hdr_len + nbytes:
        raise SampleFileError(
            f"{path}: arr_0 is truncated ({info.file_size - hdr_len} of {nbytes} data bytes present)"
        )
    return info, shape, fortran, dtype, hdr_len


def _list_image_files(path: Path) -> list[Path]:
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
                    raise SampleFileError(f"{p}: size {im.size[0]}x{im.size[1]} differs from {size[0]}x{size[1]} of the other images")
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise SampleFileError(f"{p}: unreadable image ({_one_line(e)})") from None
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out), mode, size


def _open_h5(path: Path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise SampleFileError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise SampleFileError(f"{path}: not a readable HDF5 file (corrupt or truncated: {_one_line(e)})") from None
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
        raise SampleFileError(f"{path}: {what} unreadable (corrupt or truncated: {_one_line(e)})") from None


def read_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a sample file: ``(images uint8 (N, H, W, C), labels int64 (N,) or None)``.

    npz with an uncompressed arr_0 (what `SampleWriter` / ``np.savez`` write) is returned
    as a read-only ``np.memmap`` into the zip; compressed npz, h5 and image folders
    (sorted PNG/JPG, labels None) are loaded into memory.  A ``.npy`` file is
    memory-mapped as images.  Use `iter_sample_batches` to stream instead.
    """
    path = Path(path)
    if path.is_dir():
        images, _, _ = _load_folder_images(_list_image_files(path), None, None)
        return images, None
    if not path.exists():
        raise SampleFileError(f"{path}: no such file")
    ext = path.suffix.lower()
    if ext == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SampleFileError(f"{path}: corrupt or truncated npy ({_one_line(e)})") from None
        _check_images_array(str(path), arr.shape, arr.dtype)
        return arr, None
    kind = _kind(path)
    if kind == "h5":
        f, ds, labels = _open_h5(path)
        with f:
            images = _h5_read(path, "images", lambda: ds[...])
            lab = None if labels is None else _h5_read(path, "labels", lambda: labels[...]).astype(np.int64, copy=False)
        return images, lab
    with _open_zip(path) as zf:
        info, shape, fortran, dtype, hdr_len = _open_npz_images(zf, path)
        labels = _npz_labels(zf, path, shape[0])
        if info.compress_type == zipfile.ZIP_STORED and not (info.flag_bits & 0x1):
            with open(path, "rb") as fh:
                offset = _zip_member_data_offset(fh, info) + hdr_len
            if os.path.getsize(path) < offset + math.prod(shape):
                raise SampleFileError(f"{path}: arr_0 is truncated")
            if math.prod(shape) == 0:
                return np.zeros(shape, np.uint8), labels
            images = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
            return images, labels
        try:
            with zf.open(info) as f:
                images = npy_format.read_array(f, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
            raise SampleFileError(f"{path}: arr_0 is corrupt or truncated ({_one_line(e)})") from None
        return images, labels


def sample_info(path: str | os.PathLike) -> tuple[int, tuple[int, int, int], bool]:
    """``(N, (H, W, C), has_labels)`` of a sample file or image folder without reading pixels."""
    path = Path(path)
    if path.is_dir():
        files = _list_image_files(path)
        first, _, _ = _load_folder_images(files[:1], None, None)
        return len(files), tuple(first.shape[1:]), False  # type: ignore[return-value]
    if not path.exists():
        raise SampleFileError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        images, _ = read_samples(path)
        return images.shape[0], tuple(images.shape[1:]), False  # type: ignore[return-value]
    if _kind(path) == "h5":
        f, ds, labels = _open_h5(path)
        with f:
            return ds.shape[0], tuple(ds.shape[1:]), labels is not None
    with _open_zip(path) as zf:
        _, shape, _, _, _ = _open_npz_images(zf, path)
        return shape[0], tuple(shape[1:]), _npz_member(zf, path, "arr_1") is not None  # type: ignore[return-value]


def iter_sample_batches(
    path: str | os.PathLike, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(images uint8 (b, H, W, C), labels int64 (b,) or None)`` in order, ``b <= batch_size``.

    Memory stays bounded by one batch (plus the labels): npz ``arr_0`` is read row by
    row from the zip member stream after parsing its npy header (stored or deflated),
    h5 is sliced, image folders are decoded batch by batch.
    """
    if int(batch_size) <= 0:
        raise SampleFileError(f"batch_size must be positive, got {batch_size}")
    batch_size = int(batch_size)
    path = Path(path)
    if path.is_dir():
        files = _list_image_files(path)
        mode = size = None
        for i in range(0, len(files), batch_size):
            images, mode, size = _load_folder_images(files[i : i + batch_size], mode, size)
            yield images, None
        return
    if not path.exists():
        raise SampleFileError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        images, _ = read_samples(path)
        for i in range(0, images.shape[0], batch_size):
            yield np.array(images[i : i + batch_size]), None
        return
    if _kind(path) == "h5":
        f, ds, labels = _open_h5(path)
        with f:
            n = ds.shape[0]
            for i in range(0, n, batch_size):
                j = min(n, i + batch_size)
                imgs = _h5_read(path, "images", lambda: ds[i:j])
                labs = None if labels is None else _h5_read(path, "labels", lambda: labels[i:j]).astype(np.int64, copy=False)
                yield imgs, labs
        return
    with _open_zip(path) as zf:
        info, shape, fortran, dtype, _ = _open_npz_images(zf, path)
        labels = _npz_labels(zf, path, shape[0])
        n = shape[0]
        if fortran:  # rows are not contiguous; cannot stream
            images, _ = read_samples(path)
            for i in range(0, n, batch_size):
                yield np.ascontiguousarray(images[i : i + batch_size]), None if labels is None else labels[i : i + batch_size]
            return
        row = math.prod(shape[1:])
        stored = info.compress_type == zipfile.ZIP_STORED and not (info.flag_bits & 0x1)
        try:
            # stored members are read straight from the file (one copy); others via zipfile
            with (open(path, "rb") if stored else zf.open(info)) as f:
                if stored:
                    f.seek(_zip_member_data_offset(f, info))
                _npy_header(f)
                for i in range(0, n, batch_size):
                    b = min(batch_size, n - i)
                    want = b * row
                    buf = _read_exact(f, want)
                    if len(buf) != want:
                        raise SampleFileError(f"{path}: arr_0 is truncated at sample {i + len(buf) // max(row, 1)} of {n}")
                    images = np.frombuffer(buf, dtype=np.uint8).reshape(b, *shape[1:])
                    yield images, None if labels is None else labels[i : i + b]
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            if isinstance(e, SampleFileError):
                raise
            raise SampleFileError(f"{path}: arr_0 is corrupt or truncated ({_one_line(e)})") from None


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
