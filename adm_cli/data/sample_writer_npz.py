"""The .npz sample writer: one shard pair per block in OUT.partial/, streamed into a zip64
npz at the end (see sample_writer for the format and the resume rules)."""

from __future__ import annotations

import hashlib
import io
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

from adm_cli.files import FileLock, LockBusy, fsync_dir

from .sample_format import SampleFileError, read_npy_header
from .sample_writer import _COPY_CHUNK, _FORMAT_VERSION, SampleWriter, _dumps

_SHARD_RE = re.compile(r"^(img|lab)_(\d{12})\.npy$")
_DIGEST_RE = re.compile(r"^(img|lab)_(\d{12})\.npy\.sha256$")
_OWN_FILES = re.compile(r"^((img|lab)_\d{12}\.npy(\.sha256)?(\.tmp)?|meta\.json(\.tmp)?|lock)$")


def _write_atomic(path: Path, chunks) -> str:
    """Write the byte strings ``chunks`` to ``path`` via a fsynced temporary file and an atomic
    rename; returns their SHA-256 (hex).  A failed write leaves nothing behind."""
    tmp = path.with_name(path.name + ".tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)  # a short write raises OSError(ENOSPC) here, with its errno
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _npy_chunks(arr: np.ndarray):
    """The bytes of ``arr`` as a version-1.0 npy file: header, then the C-order data."""
    arr = np.ascontiguousarray(arr)
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, npy_format.header_data_from_array_1_0(arr))
    yield header.getvalue()
    data = memoryview(arr.reshape(-1).view(np.uint8))
    for i in range(0, len(data), _COPY_CHUNK):
        yield data[i : i + _COPY_CHUNK]


def _write_shard(path: Path, arr: np.ndarray) -> None:
    """Write an npy shard and, before it, its digest ``path.sha256`` (so a shard is never there
    without the digest it was written with)."""
    digest = hashlib.sha256()
    for chunk in _npy_chunks(arr):
        digest.update(chunk)
    _write_atomic(_digest_path(path), [digest.hexdigest().encode() + b"\n"])
    got = _write_atomic(path, _npy_chunks(arr))
    assert got == digest.hexdigest()


def _digest_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".sha256")


def _stored_digest(shard: Path) -> str | None:
    try:
        text = _digest_path(shard).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _NpzSampleWriter(SampleWriter):
    def __init__(self, path: Path, total, image_shape, meta, has_labels, overwrite: bool, resume: bool):
        super().__init__(path, total, image_shape, meta, has_labels, overwrite)
        self.work = path.with_name(path.name + ".partial")
        self._shards: list[tuple[int, int]] = []  # (start, count)
        self._lock: FileLock | None = None
        try:
            self._open(resume)
        except BaseException:
            self._closed = True
            self._close()
            raise

    def _open(self, resume: bool) -> None:
        work = self.work
        if work.is_symlink() and not work.exists():
            raise SampleFileError(
                f"{work} is a symbolic link to {os.readlink(work)}, which does not exist; "
                f"create that folder or remove the link"
            )
        if work.exists() and not work.is_dir():
            raise SampleFileError(f"{work} exists and is not a directory; remove it")
        if work.exists():
            self._acquire()  # before reading or discarding anything another process may be writing
            if resume:
                stored = self._read_meta()
                if stored is not None:
                    self._check_identity(work, stored)
                    self._scan()
                    return
                if any(p.name != "lock" and (_OWN_FILES.match(p.name) or not work.is_symlink()) for p in work.iterdir()):
                    warnings.warn(f"{work}: no readable meta.json; discarding the work area and starting over")
            self._clear()
        else:
            work.mkdir(parents=True)
            self._acquire()
        record = {"format_version": _FORMAT_VERSION, **self._identity(), "meta": self.meta}
        try:
            _write_atomic(work / "meta.json", [_dumps(record).encode()])
            fsync_dir(work)
        except OSError as e:
            raise self._io_error(work, e) from None

    def _read_meta(self) -> dict | None:
        try:
            stored = json.loads((self.work / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("format_version") != _FORMAT_VERSION:
            return None
        return stored

    def _acquire(self) -> None:
        if self._lock is not None:
            return
        try:
            self._lock = FileLock(self.work / "lock").acquire()
        except LockBusy:
            raise SampleFileError(f"{self.work} is in use by another running process") from None

    def _clear(self) -> None:
        """Empty the work area (locked by us) for a fresh start; a symlinked one keeps its target."""
        for p in self.work.iterdir():
            if p.name == "lock":
                continue
            if _OWN_FILES.match(p.name) or not self.work.is_symlink():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        corrupt: str | None = None
        for s in starts:
            n = self._valid_shard(s) if s == done else None
            if n is None or done + n > self.total:
                bad_from = s
                break
            corrupt = self._digest_mismatch(s)
            if corrupt is not None:
                bad_from = s
                break
            self._shards.append((s, n))
            done += n
        # drop invalid shards, anything after a gap, orphan label shards and orphan digests
        keep = {s for s, _ in self._shards}
        dropped = 0
        for p in list(self.work.iterdir()):
            m = _SHARD_RE.match(p.name) or _DIGEST_RE.match(p.name)
            if m and int(m.group(2)) not in keep:
                p.unlink(missing_ok=True)
                dropped += p.name.startswith("img_") and not p.name.endswith(".sha256")
        if bad_from is not None:
            why = (f"{corrupt} does not match its stored SHA-256 (corrupt)" if corrupt
                   else "incomplete or inconsistent")
            warnings.warn(
                f"{self.work}: discarded {dropped} shard(s) from sample {bad_from} ({why}); resuming at {done}"
            )
        self._done = done

    def _digest_mismatch(self, start: int) -> str | None:
        """The name of the first shard of block ``start`` whose content does not match its digest."""
        for shard in self._shard_paths(start)[: 2 if self.has_labels else 1]:
            want = _stored_digest(shard)
            try:
                ok = want is not None and _file_sha256(shard) == want
            except OSError:
                ok = False
            if not ok:
                return shard.name
        return None

    def _write_block(self, images, labels, start) -> None:
        img, lab = self._shard_paths(start)
        if self.has_labels:
            _write_shard(lab, labels)
        _write_shard(img, images)  # the image shard commits the block
        fsync_dir(self.work)
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
        except _ShardChanged as e:
            tmp.unlink(missing_ok=True)
            self._broken = True
            for s in starts:  # drop the bad block and every later one; the same command redoes them
                if s >= e.start:
                    for shard in self._shard_paths(s):
                        shard.unlink(missing_ok=True)
                        _digest_path(shard).unlink(missing_ok=True)
            raise SampleFileError(
                f"{e.shard} changed on disk after it was written (corrupt); it was dropped: "
                f"run the same command again to redo it"
            ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._close()
        self._remove_work()

    def _remove_work(self) -> None:
        """Delete the finished work area; a symlinked one loses its link and our files only."""
        if self.work.is_symlink():
            target = self.work.resolve()
            for p in list(target.iterdir()):
                if _OWN_FILES.match(p.name):
                    p.unlink(missing_ok=True)
            try:
                target.rmdir()  # only when nothing else is in it
            except OSError:
                pass
            self.work.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


class _ShardChanged(Exception):
    def __init__(self, shard: Path):
        super().__init__(str(shard))
        self.shard = shard
        self.start = int(_SHARD_RE.match(shard.name).group(2))  # type: ignore[union-attr]


def _stream_member(zf: zipfile.ZipFile, name: str, dtype, shape, shard_files) -> None:
    """Write member ``name`` as one npy array of ``shape``, concatenating the data of ``shard_files``."""
    header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    with zf.open(name, "w", force_zip64=True) as out:
        npy_format.write_array_header_1_0(out, header)
        for shard in shard_files:
            want = _stored_digest(shard)
            h = hashlib.sha256()
            with open(shard, "rb") as f:
                read_npy_header(f)
                header_len = f.tell()
                f.seek(0)
                h.update(f.read(header_len))
                while chunk := f.read(_COPY_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != want:  # verified again while copied: a shard changed since resume
                raise _ShardChanged(shard)


# ---- h5
