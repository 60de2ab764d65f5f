"""Sample files (npz/h5, streamed and resumable) and image helpers."""

from .images import center_crop_arr, load_image, make_grid, save_grid, to_uint8
from .samples import (
    SampleFileError,
    SampleWriter,
    iter_sample_batches,
    open_sample_writer,
    read_samples,
    sample_info,
)

__all__ = [
    "SampleFileError",
    "SampleWriter",
    "open_sample_writer",
    "read_samples",
    "iter_sample_batches",
    "sample_info",
    "to_uint8",
    "save_grid",
    "make_grid",
    "center_crop_arr",
    "load_image",
]
