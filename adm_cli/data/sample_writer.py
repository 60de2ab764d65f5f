"""Streamed, atomic, resumable writing of sample files (``.npz`` / ``.h5``): the formats, the
resume rules and the `SampleWriter` base class that the two writers build on.

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

Writing (`adm_cli.data.samples.open_sample_writer`)
---------------------------------------------------
Samples are written block by block as they are produced; nothing holds more than one
block in memory.  Progress lives in a work area next to the output:

* npz: directory ``OUT.partial/`` with ``meta.json`` and one pair of shards per block,
  ``lab_<start>.npy`` then ``img_<start>.npy`` (each written to a temporary name,
  fsynced and ``os.replace``d, so a shard is either complete or absent), each preceded
  by its SHA-256 in ``<shard>.sha256``.  Shards are verified on resume (header, size and
  digest) and again while `finalize` copies them; a truncated / unreadable /
  non-contiguous / corrupt shard and all after it are discarded (one warning) and
  re-done.  `finalize` streams the shards into ``OUT.tmp`` and renames it to ``OUT``,
  then removes the work area.  ``OUT.partial`` may be a symbolic link to a folder (it is
  followed; at the end only the link and our own files in it are removed); a dangling
  one is refused.  ``OUT.partial/lock`` is held with ``flock`` while writing.
* h5: the file ``OUT.partial.h5`` itself (a regular file; held with ``flock`` while
  writing); after each block the data and its digest (dataset ``block_digests``:
  start, count, SHA-256 of the block's image then label bytes) are flushed, then
  attribute ``done`` is updated and flushed.  On resume the blocks below ``done`` are
  verified against their digests; an unreadable work file is discarded with a warning.
  `finalize` renames it to ``OUT``.

A failed write (a full disk) raises one `SampleFileError`; nothing more is written and
the work area stays as it was, so the same command resumes once space is freed.

Re-running the same command resumes from the stored contiguous prefix
``0 .. done-1``.  The stored ``total``, ``image_shape``, ``has_labels`` and
``meta["fingerprint"]`` must match the new run, otherwise `SampleFileError` is raised
instead of mixing outputs.  A finished ``OUT`` is never overwritten unless
``overwrite=True`` (and even then only by the atomic rename at `finalize`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from adm_cli.files import DISK_FULL, fsync_dir, write_reason

from .sample_format import SampleFileError

__all__ = ["SampleWriter"]

_FORMAT_VERSION = 1
_COPY_CHUNK = 16 << 20  # bytes copied at a time when streaming shards into the zip


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
        self._broken = False  # a write failed: nothing more is written, the work area stays for resuming

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
        self._check_not_broken()
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
        try:
            self._write_block(np.ascontiguousarray(images), labels, start)
        except OSError as e:
            self._broken = True
            raise self._io_error(getattr(self, "work", self.path), e) from None
        except BaseException:
            self._broken = True
            raise
        self._done = start + n
        return self._done

    def finalize(self) -> Path:
        """Produce the final file atomically (requires ``done == total``); returns its path."""
        if self._finalized:
            return self.path
        if self._closed:
            raise SampleFileError(f"{self.path}: writer is closed")
        self._check_not_broken()
        if self._done != self.total:
            raise SampleFileError(f"{self.path}: cannot finalize with {self._done}/{self.total} samples written")
        try:
            self._finalize()
        except OSError as e:
            raise self._io_error(self.path, e) from None
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

    def _check_not_broken(self) -> None:
        if self._broken:
            raise SampleFileError(f"{self.path}: an earlier write failed; re-run the same command to continue")

    @staticmethod
    def _io_error(where: Path, e: BaseException) -> SampleFileError:
        """One line for an I/O failure while writing (a full disk, a quota, an I/O error)."""
        what = write_reason(e)
        if getattr(e, "errno", None) in DISK_FULL:
            return SampleFileError(
                f"cannot write {where}: {what}; free some space and run the same command again to continue"
            )
        return SampleFileError(f"cannot write {where}: {what}; run the same command again to continue")

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
        if os.path.lexists(self.path) and not self._overwrite:  # a symlink (even dangling) too
            raise SampleFileError(f"{self.path} exists; pass --overwrite to replace it")
        os.replace(src, self.path)
        fsync_dir(self.path.parent)
