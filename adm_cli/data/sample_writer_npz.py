"""The .npz sample writer: one shard pair per block in OUT.partial/, streamed into a zip64
npz at the end (see sample_writer for the format and the resume rules)."""

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

import numpy as np
from numpy.lib import format as npy_format

from .sample_format import SampleFileError, read_npy_header
from .sample_writer import _COPY_CHUNK, _FORMAT_VERSION, SampleWriter, _dumps, _fsync_dir

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
