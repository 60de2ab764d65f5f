"""The .h5 sample writer: the work file OUT.partial.h5 itself, renamed when complete
(see sample_writer for the format and the resume rules)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .sample_format import SampleFileError, one_line
from .sample_writer import _FORMAT_VERSION, SampleWriter, _dumps


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
