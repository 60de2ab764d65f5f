"""Sample files: streamed, atomic, resumable ``.npz`` / ``.h5`` writing and their readers.

Façade over the implementation modules, kept so ``from adm_cli.data.samples import ...``
works:

* `adm_cli.data.sample_writer`: `open_sample_writer` / `SampleWriter` (file layouts,
  work areas and resuming are documented there);
* `adm_cli.data.sample_reader`: `read_samples`, `iter_sample_batches`, `sample_info`
  (npz, h5, npy and image folders);
* `adm_cli.data.sample_format`: `SampleFileError` and what both sides share.
"""

from __future__ import annotations

from .sample_format import IMAGE_EXTENSIONS, SampleFileError
from .sample_reader import iter_sample_batches, read_labels, read_samples, sample_info
from .sample_writer import SampleWriter, open_sample_writer

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
