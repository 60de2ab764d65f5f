"""Sample files: streamed, atomic, resumable ``.npz`` / ``.h5`` writing and their readers.

The entry point of the sample-file modules, which it sits above:

* here: `open_sample_writer`, which checks the request and picks the writer by suffix;
* `adm_cli.data.sample_writer`: `SampleWriter`, the base class (file layouts, work areas
  and resuming are documented there), and its two subclasses in `sample_writer_npz` and
  `sample_writer_h5`;
* `adm_cli.data.sample_reader`: `read_samples`, `iter_sample_batches`, `sample_info`
  (npz, h5, npy and image folders);
* `adm_cli.data.sample_format`: `SampleFileError` and what both sides share.
"""

from __future__ import annotations

import os
from pathlib import Path

from .sample_format import IMAGE_EXTENSIONS, SampleFileError, sample_kind
from .sample_reader import iter_sample_batches, read_labels, read_samples, sample_info
from .sample_writer import SampleWriter, _dumps
from .sample_writer_h5 import _H5SampleWriter
from .sample_writer_npz import _NpzSampleWriter

__all__ = [
    "SampleFileError",
    "SampleWriter",
    "open_sample_writer",
    "read_samples",
    "read_labels",
    "iter_sample_batches",
    "sample_info",
    "IMAGE_EXTENSIONS",
]


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
    if os.path.lexists(path) and not overwrite:  # a symlink (even dangling) too
        raise SampleFileError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise SampleFileError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = _NpzSampleWriter if kind == "npz" else _H5SampleWriter
    return cls(path, total, image_shape, meta, has_labels, overwrite, resume)
