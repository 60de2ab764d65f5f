"""Streamed, atomic, resumable writing of sample files (``.npz`` / ``.h5``).

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
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from .sample_format import SampleFileError, one_line, read_npy_header, sample_kind

__all__ = ["SampleWriter", "open_sample_writer"]

_FORMAT_VERSION = 1
_COPY_CHUNK = 16 << 20  # bytes copied at a time when streaming shards into the zip


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
            want = ", ".join(map(str, self.image_shape))
            raise SampleFileError(f"{self.path}: images have shape {tuple(images.shape)}; expected (n, {want})")
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
        mine = json.loads(_dumps(self._identity()))  # compare as stored (tuples become lists, ...)
        diffs = [k for k in mine if stored.get(k) != mine[k]]
        if diffs:
            parts = ", ".join(f"{k}: stored {stored.get(k)!r} vs now {mine[k]!r}" for k in diffs)
            raise SampleFileError(
                f"{work} holds progress from a different run ({parts}); "
                f"delete it or pass --no-resume to start over"
            )

    def _publish(self, src: Path) -> None:
        """fsync the finished file ``src`` and rename it to `path` (unless that exists and overwrite is off)."""
        with open(src, "rb+") as f:
            os.fsync(f.fileno())
        if self.path.exists() and not self._overwrite:
            raise SampleFileError(f"{self.path} exists; pass --overwrite to replace it")
        os.replace(src, self.path)
        _fsync_dir(self.path.parent)


# ---- npz


_SHARD_RE = re.compile(r"^(img|lab)_(\d{12})\.npy$")


def _write_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        npy_format.write_array(f, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
            try:
                stored = json.loads((self.work / "meta.json").read_text())
                if not isinstance(stored, dict) or stored.get("format_version") != _FORMAT_VERSION:
                    raise ValueError("bad meta")
            except (OSError, ValueError):
                warnings.warn(f"{self.work}: no readable meta.json; discarding the work area and starting over")
                shutil.rmtree(self.work)
            else:
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
                shape, fortran, dtype = read_npy_header(f)
                off = f.tell()
            if fortran or dtype != np.uint8 or len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
                return None
            n = int(shape[0])
            if n <= 0 or img.stat().st_size != off + n * math.prod(self.image_shape):
                return None
            if self.has_labels:
                with open(lab, "rb") as f:
                    lshape, lfortran, ldtype = read_npy_header(f)
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
            if m and m.group(1) == "img":
                starts.append(int(m.group(2)))
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
            m = _SHARD_RE.match(p.name)
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
        starts = [s for s, _ in self._shards]
        try:
            with open(tmp, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                shape = (self.total, *self.image_shape)
                _stream_member(zf, "arr_0.npy", np.uint8, shape, (self._shard_paths(s)[0] for s in starts))
                if self.has_labels:
                    _stream_member(zf, "arr_1.npy", np.int64, (self.total,), (self._shard_paths(s)[1] for s in starts))
            self._publish(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._close()
        shutil.rmtree(self.work, ignore_errors=True)


def _stream_member(zf: zipfile.ZipFile, name: str, dtype, shape, shard_files) -> None:
    """Write member ``name`` as one npy array of ``shape``, concatenating the data of ``shard_files``."""
    header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    with zf.open(name, "w", force_zip64=True) as out:
        npy_format.write_array_header_1_0(out, header)
        for shard in shard_files:
            with open(shard, "rb") as f:
                read_npy_header(f)
                shutil.copyfileobj(f, out, _COPY_CHUNK)


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


def _raise_if_locked(work: Path, e: BaseException) -> None:
    """Turn HDF5's file-locking error (another process has ``work`` open) into a `SampleFileError`."""
    s = str(e).lower()
    if "lock" in s and ("unable" in s or "already" in s or "resource temporarily" in s):
        raise SampleFileError(f"{work} is in use by another running process") from None


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
            if self.work.exists() and not resume:
                try:
                    h5py.File(self.work, "r").close()  # refuse to discard a file another process is using
                except (OSError, ValueError) as e:
                    _raise_if_locked(self.work, e)
                self.work.unlink()
            if self.work.exists():
                self._resume(h5py)
            if self._f is None:
                self._create(h5py)
        except BaseException:
            _H5_ACTIVE.discard(self._key)
            self._closed = True
            raise

    def _resume(self, h5py) -> None:
        """Reopen the work file and trim it to its ``done`` samples; discard it if unusable."""
        try:
            f = h5py.File(self.work, "r+")
        except (OSError, ValueError) as e:
            _raise_if_locked(self.work, e)
            warnings.warn(f"{self.work}: unreadable ({one_line(e)}); discarding it and starting over")
            self.work.unlink()
            return
        try:
            stored = json.loads(f.attrs["identity_json"])
            done = int(f.attrs["done"])
            images, labels = f["images"], f.get("labels")
        except Exception as e:
            f.close()
            warnings.warn(f"{self.work}: incomplete work file ({one_line(e)}); starting over")
            self.work.unlink()
            return
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

    def _create(self, h5py) -> None:
        try:
            f = h5py.File(self.work, "w")
        except OSError as e:
            _raise_if_locked(self.work, e)
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
        self._publish(self.work)
        _H5_ACTIVE.discard(self._key)

    def _close(self) -> None:
        try:
            if self._f is not None:
                self._f.close()
        finally:
            self._f = None
            _H5_ACTIVE.discard(self._key)


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
    kind = sample_kind(path)
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
