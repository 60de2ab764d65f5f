"""Where evaluation images come from: sample files / folders (streamed) or training data sets.

A source yields uint8 NHWC batches from any starting index (so extraction resumes) and
names its content for caches: a sample file by the SHA-256 of its bytes, remembered next to
the file by size and modification time so a second evaluation does not re-hash 39 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from adm_cli.checkpoint import file_digest
from adm_cli.data.datasets import ImageData
from adm_cli.files import write_bytes_atomic
from adm_cli.data.sample_reader import iter_sample_batches, list_sample_images, sample_info

__all__ = ["ImageSource", "SampleSource", "DatasetSource", "CACHE_DIRNAME"]

CACHE_DIRNAME = ".adm-cache"
MEMO_VERSION = 2  # 2: a single file's digest is its plain SHA-256 (1 hashed its name too)


class ImageSource(Protocol):
    name: str

    def __len__(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def batches(self, batch_size: int, *, start: int = 0) -> Iterator[np.ndarray]: ...

    def content_id(self) -> str: ...


def _sha256_of_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(os.fsencode(p.relative_to(root)) + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    return h.hexdigest()


class SampleSource:
    """A sample file (``.npz``, ``.h5``, ``.npy``) or an image folder, read in batches."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = str(self.path)
        n, shape, _ = sample_info(self.path)
        self._n, self._shape = n, shape

    def __len__(self) -> int:
        return self._n

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape

    def batches(self, batch_size: int, *, start: int = 0) -> Iterator[np.ndarray]:
        for images, _ in iter_sample_batches(self.path, batch_size, start=start):
            yield images

    def _files(self) -> list[Path]:
        return list_sample_images(self.path) if self.path.is_dir() else [self.path]

    def content_id(self) -> str:
        """SHA-256 of the file's bytes, as ``sha256sum`` prints it (a folder: of its image files'
        relative names and bytes), remembered next to the file by size and modification time."""
        files = self._files()
        stamp = [[p.name, st.st_size, st.st_mtime_ns] for p in files for st in (p.stat(),)]
        memo = self.memo_path()
        try:
            stored = json.loads(memo.read_text())
            if stored.get("stamp") == stamp and stored.get("v") == MEMO_VERSION:
                return stored["sha256"]
        except (OSError, ValueError, AttributeError, KeyError):
            pass
        digest = _sha256_of_files(files, self.path) if self.path.is_dir() else file_digest(self.path)
        try:
            memo.parent.mkdir(exist_ok=True)
            write_bytes_atomic(memo, json.dumps({"sha256": digest, "stamp": stamp, "v": MEMO_VERSION}).encode())
        except OSError:
            pass  # a read-only folder: hash again next time
        return digest

    def memo_path(self) -> Path:
        parent = self.path.parent
        return parent / CACHE_DIRNAME / f"{self.path.name}.sha256.json"


@dataclass
class DatasetSource:
    """Training-style data (`adm_cli.data.open_dataset`), optionally restricted to ``indices``."""

    data: ImageData
    name: str
    identity: str

    def __len__(self) -> int:
        return len(self.data)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        images, _ = self.data.get([0])
        return tuple(images.shape[1:])  # type: ignore[return-value]

    def batches(self, batch_size: int, *, start: int = 0) -> Iterator[np.ndarray]:
        for i in range(start, len(self.data), batch_size):
            images, _ = self.data.get(np.arange(i, min(i + batch_size, len(self.data))))
            yield images

    def content_id(self) -> str:
        return hashlib.sha256(self.identity.encode()).hexdigest()


