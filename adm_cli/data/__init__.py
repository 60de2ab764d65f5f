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
from .datasets import DataError, ImageData, open_dataset, split_holdout
from .synthetic import SyntheticShapes
from .idx import read_idx, write_idx
from .batches import BatchLoader, batch_indices, random_flip, random_resized_crop, to_model_input

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
    "DataError",
    "ImageData",
    "open_dataset",
    "split_holdout",
    "SyntheticShapes",
    "read_idx",
    "write_idx",
    "BatchLoader",
    "batch_indices",
    "to_model_input",
    "random_flip",
    "random_resized_crop",
]
