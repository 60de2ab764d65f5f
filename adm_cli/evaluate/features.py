"""Feature extraction over an image source, in batches, cached and resumable.

Activations are written in chunks (``feat-<start>.npz``, atomically) to a cache folder keyed
by the source's content hash and the network; a killed extraction resumes from the last
whole chunk, and a finished one is read back instead of recomputed.  The default cache
folder sits next to the source (``.adm-cache/``); a read-only location falls back to
``fallback_dir``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from .sources import CACHE_DIRNAME, ImageSource

__all__ = ["FeatureNet", "exact_fp32", "extract_features", "feature_cache_dir", "FeatureCache"]

_CHUNK_RE = re.compile(r"^feat-(\d{12})\.npz$")
_CACHE_VERSION = 1


class FeatureNet(Protocol):
    """Images (N, H, W, C) uint8 → named float32 features (N, D)."""

    id: str  # names the network and its input path, for caches
    dims: dict[str, int]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


@contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls, no cuDNN autotuning: features in true float32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def feature_cache_dir(source: ImageSource, net: FeatureNet, *, fallback_dir: Path | None = None) -> Path:
    """``<source dir>/.adm-cache/<name>.<content hash>.<network id>/`` (or under ``fallback_dir``)."""
    key = f"{Path(source.name).name}.{source.content_id()[:16]}.{net.id}"
    path = getattr(source, "path", None)
    if path is not None:
        local = Path(path).parent / CACHE_DIRNAME
        try:
            local.mkdir(exist_ok=True)
            if os.access(local, os.W_OK | os.X_OK):
                return local / key
        except OSError:
            pass
    if fallback_dir is None:
        fallback_dir = Path.home() / ".cache" / "adm" / "features"
    return Path(fallback_dir) / key


class FeatureCache:
    """Chunks of activations for rows [start, start + len) of one (source, network) pair."""

    def __init__(self, root: Path, *, n: int, net_id: str, source: str):
        self.root = root
        self.identity = {"version": _CACHE_VERSION, "n": n, "network": net_id}
        self.source = source
        root.mkdir(parents=True, exist_ok=True)
        meta = root / "meta.json"
        try:
            stored = json.loads(meta.read_text())
        except (OSError, ValueError):
            stored = None
        if stored is None or {k: stored.get(k) for k in self.identity} != self.identity:
            for p in root.glob("feat-*"):
                p.unlink()
            tmp = root / "meta.json.tmp"
            tmp.write_text(json.dumps({**self.identity, "source": source}))
            os.replace(tmp, meta)

    def chunks(self) -> list[tuple[int, Path]]:
        """Readable chunks that tile [0, done) without gaps; later or broken ones are removed."""
        found = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _CHUNK_RE.match(p.name)))
        out, end = [], 0
        for start, p in found:
            rows = self._rows(p) if start == end else None
            if rows is None:
                p.unlink()
                continue
            out.append((start, p))
            end = start + rows
        return out

    @staticmethod
    def _rows(p: Path) -> int | None:
        try:
            with np.load(p) as z:
                return int(z["rows"])
        except Exception:
            return None

    def done(self) -> int:
        chunks = self.chunks()
        if not chunks:
            return 0
        start, p = chunks[-1]
        return start + (self._rows(p) or 0)

    def write(self, start: int, feats: dict[str, np.ndarray]) -> None:
        rows = len(next(iter(feats.values())))
        tmp = self.root / f"feat-{start:012d}.tmp.npz"
        np.savez(tmp, rows=np.int64(rows), **feats)
        os.replace(tmp, self.root / f"feat-{start:012d}.npz")

    def read(self) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for _, p in self.chunks():
            with np.load(p) as z:
                for k in z.files:
                    if k != "rows":
                        parts.setdefault(k, []).append(z[k])
        return {k: np.concatenate(v, 0) for k, v in parts.items()}

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _MemoryStore:
    """`FeatureCache`'s write/read for an extraction that keeps nothing on disk."""

    def __init__(self):
        self.blocks: list[dict[str, np.ndarray]] = []

    def done(self) -> int:
        return 0

    def write(self, start: int, feats: dict[str, np.ndarray]) -> None:
        self.blocks.append(feats)

    def read(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate([b[k] for b in self.blocks], 0) for k in (self.blocks[0] if self.blocks else {})}


def extract_features(
    source: ImageSource,
    net: FeatureNet,
    *,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    chunk: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """All of ``source``'s features, resuming from ``cache`` and filling it chunk by chunk as it goes."""
    store = cache if cache is not None else _MemoryStore()
    n = len(source)
    start = store.done()
    if progress is not None and start:
        progress(start)
    pending: list[dict[str, np.ndarray]] = []
    rows = 0
    if start < n:
        for images in source.batches(batch_size, start=start):
            pending.append(net(images))
            rows += len(images)
            if progress is not None:
                progress(len(images))
            if rows >= chunk or start + rows == n:
                store.write(start, {k: np.concatenate([p[k] for p in pending], 0) for k in net.dims})
                start, rows, pending = start + rows, 0, []
    out = store.read()
    got = len(next(iter(out.values()))) if out else 0
    if got != n:
        raise RuntimeError(f"{source.name}: extracted {got} feature rows for {n} images")
    return out
