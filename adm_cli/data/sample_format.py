"""What sample writers and readers share: the error type, file kinds and npy headers.

File layouts are documented in `adm_cli.data.sample_writer`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_NPZ_EXT = (".npz",)
_H5_EXT = (".h5", ".hdf5")


class SampleFileError(ValueError):
    """A sample file / work area that cannot be read or written as asked (one-line message)."""


def sample_kind(path: Path) -> str:
    """``"npz"`` or ``"h5"`` from the extension of ``path``; anything else is a `SampleFileError`."""
    ext = path.suffix.lower()
    if ext in _NPZ_EXT:
        return "npz"
    if ext in _H5_EXT:
        return "h5"
    raise SampleFileError(f"{path}: unsupported sample file extension {ext or '(none)'!r}; use .npz or .h5")


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the npy header at the position of ``f``; leaves ``f`` at the data."""
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


def one_line(e: BaseException) -> str:
    """``e`` as a short single line for error messages."""
    return " ".join(str(e).split())[:200] or type(e).__name__
