"""The .h5 sample writer: the work file OUT.partial.h5 itself, renamed when complete
(see sample_writer for the format and the resume rules).

HDF5 does its own I/O through `_GuardedFile` (h5py's file-object driver), never through its
``sec2`` driver: once a write fails (a full disk), HDF5's metadata cache is left in a state in
which closing the file raises and then crashes the interpreter (a segfault), and errors raised
while h5py releases objects are only printed, never raised, so a failed block could look written.
The guard records the first failed write and silently drops every later one, so HDF5 closes
cleanly, the file on disk stays as it was when the disk filled up (a resumable prefix, like a
killed run), and the writer raises one `SampleFileError`.

The work file is locked with ``flock`` (`adm_cli.files.FileLock` on the file itself): the
kernel drops the lock when its process dies, so a file left by a killed run is never mistaken
for one in use; an unreadable one is discarded with a warning and started over.

Each block's digest (SHA-256 of its image bytes then its label bytes) is stored in the dataset
``block_digests`` (start, count, sha256) and verified on resume: a block that does not match,
and every block after it, is written again (one warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from adm_cli.files import FileLock, LockBusy, fsync_dir

from .sample_format import SampleFileError, one_line
from .sample_writer import _FORMAT_VERSION, SampleWriter, _dumps

_DIGESTS = "block_digests"
_DIGEST_DTYPE = np.dtype([("start", "<i8"), ("count", "<i8"), ("sha256", "S64")])


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


def block_digest(images: np.ndarray, labels: np.ndarray | None) -> str:
    """SHA-256 (hex) of a block: its uint8 image bytes, then its int64 little-endian label bytes."""
    h = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).data)
    if labels is not None:
        h.update(np.ascontiguousarray(labels, dtype="<i8").data)
    return h.hexdigest()


class _GuardedFile:
    """A raw file for h5py's ``fileobj`` driver that never reports a failed write to HDF5.

    The first `OSError` of a write / truncate is kept in `error` and from then on nothing more
    is written (see the module docstring); `poison` stops writing without an error.
    """

    def __init__(self, path: Path):
        self._f = open(path, "r+b", buffering=0)
        self.error: OSError | None = None
        self._poisoned = False

    def poison(self) -> None:
        self._poisoned = True

    @property
    def writable(self) -> bool:
        return self.error is None and not self._poisoned

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            k = self._f.readinto(view[got:])
            if not k:
                break
            got += k
        return got

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.writable:
            try:
                while view:
                    k = self._f.write(view)
                    if not k:
                        raise OSError(28, os.strerror(28))
                    view = view[k:]
            except OSError as e:
                self.error = e
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.writable:
            try:
                return self._f.truncate(size)
            except OSError as e:
                self.error = e
        return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass

    def fsync(self) -> None:
        if self.writable:
            try:
                os.fsync(self._f.fileno())
            except OSError as e:
                self.error = e

    def close(self) -> None:
        self._f.close()


class _H5SampleWriter(SampleWriter):
    def __init__(self, path: Path, total, image_shape, meta, has_labels, overwrite: bool, resume: bool):
        super().__init__(path, total, image_shape, meta, has_labels, overwrite)
        self.work = path.with_name(path.name + ".partial.h5")
        self._f = None
        self._raw: _GuardedFile | None = None
        self._lock: FileLock | None = None
        try:
            self._acquire()
            if not resume:
                os.truncate(self.work, 0)
            if self.work.stat().st_size > 0:
                self._resume()
            if self._f is None:
                self._create()
        except BaseException:
            self._closed = True
            self._close()
            raise

    # -- opening
    def _acquire(self) -> None:
        """Lock the work file itself (created empty if missing); the lock must be on the inode that
        the name still refers to (a finishing writer renames it to OUT)."""
        if self.work.is_symlink() or (self.work.exists() and not self.work.is_file()):
            raise SampleFileError(f"{self.work} exists and is not a regular file; remove it")
        for _ in range(5):
            lock = FileLock(self.work)
            try:
                lock.acquire()
            except LockBusy:
                raise SampleFileError(f"{self.work} is in use by another running process") from None
            try:
                fd = lock.fileno()
                same = fd is None or os.fstat(fd).st_ino == os.stat(self.work).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock = lock
                return
            lock.release()
        raise SampleFileError(f"{self.work} keeps changing; is another process writing {self.path}?")

    def _open_h5(self, mode: str):
        import h5py

        self._raw = _GuardedFile(self.work)
        return h5py.File(self._raw, mode)

    def _restart(self, why: str) -> None:
        warnings.warn(f"{self.work}: {why}; discarding it and starting over")
        if self._raw is not None:
            self._raw.poison()  # nothing of it is kept: closing must not write
        self._drop_handles()
        os.truncate(self.work, 0)

    def _resume(self) -> None:
        """Reopen the work file, verify the stored blocks and trim it to the verified prefix;
        start over (one warning) if it is unusable."""
        try:
            f = self._open_h5("r+")
        except Exception as e:
            self._restart(f"unreadable ({one_line(e)})")
            return
        self._f = f
        try:
            stored = json.loads(f.attrs["identity_json"])
            done = int(f.attrs["done"])
            images, labels = f["images"], f.get("labels")
            digests = f.get(_DIGESTS)
            if digests is None:
                raise KeyError("no block digests")
            table = digests[...]
        except Exception as e:
            self._restart(f"incomplete work file ({one_line(e)})")
            return
        self._check_identity(self.work, stored)
        done = max(0, min(done, images.shape[0], labels.shape[0] if labels is not None else done, self.total))
        kept, n_blocks, bad_at = self._verify(images, labels, table, done)
        if bad_at is not None:
            warnings.warn(
                f"{self.work}: samples {bad_at}..{done - 1} do not match their stored digest (corrupt); "
                f"writing them again from {kept}"
            )
        done = kept
        try:
            if images.shape[0] != done:
                images.resize(done, axis=0)
            if labels is not None and labels.shape[0] != done:
                labels.resize(done, axis=0)
            if digests.shape[0] != n_blocks:
                digests.resize(n_blocks, axis=0)
            f.attrs["done"] = done
            f.flush()
        except Exception as e:
            self._fail(e)
        self._check_io()
        self._done = done

    def _verify(self, images, labels, table, done: int) -> tuple[int, int, int | None]:
        """``(samples, blocks)`` of the verified contiguous prefix within ``0..done-1``, and the
        sample where verification broke (None when all ``done`` samples were verified)."""
        pos = blocks = 0
        for start, count, digest in table:
            start, count = int(start), int(count)
            if start != pos or count <= 0 or start + count > done:
                break
            try:
                got = block_digest(images[start : start + count], None if labels is None else labels[start : start + count])
            except Exception:
                break
            if got != digest.decode("ascii", "replace"):
                break
            pos += count
            blocks += 1
        return pos, blocks, (pos if pos < done else None)

    def _create(self) -> None:
        import h5py  # noqa: F401  (fail early when h5py is missing)

        os.truncate(self.work, 0)
        try:
            f = self._open_h5("w")
            self._f = f
            h, w, c = self.image_shape
            rows = max(1, min(self.total or 1, (1 << 20) // max(1, h * w * c)))  # ~1 MiB chunks
            f.create_dataset("images", shape=(0, h, w, c), maxshape=(None, h, w, c), dtype=np.uint8, chunks=(rows, h, w, c))
            if self.has_labels:
                f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
            f.create_dataset(_DIGESTS, shape=(0,), maxshape=(None,), dtype=_DIGEST_DTYPE, chunks=(256,))
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
        except Exception as e:
            self._fail(e)
        self._check_io()

    # -- writing
    def _fail(self, e: BaseException) -> None:
        """Stop writing to the work file for good and raise one `SampleFileError`."""
        raw = self._raw
        if raw is not None:
            raw.poison()
        self._broken = True
        err = raw.error if raw is not None and raw.error is not None else e
        raise self._io_error(self.work, err) from None

    def _check_io(self) -> None:
        """HDF5 may report a failed write late or not at all: the guard has the truth."""
        if self._raw is not None and self._raw.error is not None:
            self._fail(self._raw.error)

    def _write_block(self, images, labels, start) -> None:
        f = self._f
        n = images.shape[0]
        try:
            f["images"].resize(start + n, axis=0)
            f["images"][start : start + n] = images
            if self.has_labels:
                f["labels"].resize(start + n, axis=0)
                f["labels"][start : start + n] = labels
            d = f[_DIGESTS]
            k = d.shape[0]
            d.resize(k + 1, axis=0)
            d[k] = np.array((start, n, block_digest(images, labels).encode()), dtype=_DIGEST_DTYPE)
            f.flush()
            self._check_io()  # the data is on disk before `done` says so
            f.attrs["done"] = start + n
            f.flush()
        except SampleFileError:
            raise
        except Exception as e:
            self._fail(e)
        self._check_io()

    def _finalize(self) -> None:
        try:
            self._f.attrs["done"] = self.total
            self._f.attrs["complete"] = True
            self._f.flush()
            self._check_io()
            self._f.close()
            self._f = None
            self._raw.fsync()
            self._check_io()
        except SampleFileError:
            raise
        except Exception as e:
            self._fail(e)
        self._drop_handles()
        if os.path.lexists(self.path) and not self._overwrite:
            raise SampleFileError(f"{self.path} exists; pass --overwrite to replace it")
        os.replace(self.work, self.path)  # still locked: a second writer cannot take the renamed file
        fsync_dir(self.path.parent)
        self._close()

    def _drop_handles(self) -> None:
        f, raw = self._f, self._raw
        self._f = self._raw = None
        try:
            if f is not None:
                try:
                    f.close()
                except Exception:
                    if raw is not None:
                        raw.poison()
        finally:
            if raw is not None:
                raw.close()

    def _close(self) -> None:
        try:
            self._drop_handles()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
