"""Files a running adm process owns: exclusive locks and durable renames.

`FileLock`: an advisory exclusive lock on a run directory or a sample file being written, so that
a second process gets one clear line instead of interleaving writes. It is ``flock(2)``: the
kernel drops it when the process dies, so a killed run never leaves a stale lock behind (nothing
to clean up by hand). `fsync_dir`: make a rename in a folder durable. `write_bytes_atomic`: a
small file written under a temporary name, fsynced and renamed, so it is whole or absent. This module imports
nothing from adm; every layer may use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["FileLock", "LockBusy", "fsync_dir", "write_bytes_atomic", "write_reason", "DISK_FULL"]


class LockBusy(RuntimeError):
    """Another live process holds the lock."""


class FileLock:
    """An exclusive, non-blocking lock held through ``path`` (created if missing, never deleted:
    deleting it would let two processes lock two different files of one name).

    >>> lock = FileLock(run / "lock").acquire()   # raises LockBusy if held elsewhere
    >>> lock.release()
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        """The descriptor holding the lock (None when not held), e.g. to check which file it is."""
        return self._fd

    def acquire(self) -> "FileLock":
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX systems have no flock; run unlocked
            return self
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockBusy(f"{self.path.parent} is in use by another running process") from None
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; best effort, since not every system
    can open a directory."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``.NAME.PID.tmp`` in the same folder (fsync, rename):
    readers see the old file or the whole new one, never a part. Raises the OSError; the
    temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_reason(e: BaseException) -> str:
    """A short reason for a failed write: "no space left on device" / "disk quota exceeded" for
    a full disk, else the OS's text. Libraries hide the OSError (torch.save wraps a full disk in
    a RuntimeError "unexpected pos ..."), so the exception chain is searched."""
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ENOSPC:
                return "no space left on device"
            if seen.errno == errno.EDQUOT:
                return "disk quota exceeded"
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__
