"""Feature extraction over an image source, in batches, cached and resumable.

Activations are written in chunks (``feat-<start>.npz``, atomically) to a cache folder keyed
by the source's content hash and the network; a killed extraction resumes from the last
whole chunk, and a finished one is read back instead of recomputed.  Chunks are checked whole
when read (a damaged one is dropped, recomputed, and reported in one line).  The default cache
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

from adm_cli.files import write_bytes_atomic

from .sources import CACHE_DIRNAME, ImageSource

__all__ = ["CorruptChunk", "FeatureNet", "exact_fp32", "extract_features", "feature_cache_dir", "FeatureCache"]

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


class CorruptChunk(Exception):
    """A cache chunk that cannot be read back whole (truncated, bad CRC, wrong names or shapes)."""


class FeatureCache:
    """Chunks of activations for rows [start, start + len) of one (source, network) pair.

    Every chunk is checked when the cache is consulted (read whole, so the zip CRCs are verified,
    and its arrays' names and shapes); a damaged one is dropped with the chunks after it, those
    rows are computed again, and ``warn`` says so in one line.
    """

    def __init__(
        self,
        root: Path,
        *,
        n: int,
        net_id: str,
        source: str,
        dims: dict[str, int] | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.root = root
        self.identity = {"version": _CACHE_VERSION, "n": n, "network": net_id}
        self.source = source
        self.n = n
        self.dims = dict(dims) if dims is not None else None
        self.warn = warn
        self._checked: dict[str, tuple[tuple[int, int], int]] = {}  # name -> ((size, mtime_ns), rows)
        self.dropped = 0  # damaged chunks dropped so far
        root.mkdir(parents=True, exist_ok=True)
        meta = root / "meta.json"
        try:
            stored = json.loads(meta.read_text())
        except (OSError, ValueError):
            stored = None
        if not isinstance(stored, dict) or {k: stored.get(k) for k in self.identity} != self.identity:
            for p in root.glob("feat-*"):
                p.unlink()
            write_bytes_atomic(meta, json.dumps({**self.identity, "source": source}).encode())

    def chunks(self) -> list[tuple[int, Path]]:
        """Readable chunks that tile [0, done) without gaps; later or broken ones are removed."""
        found = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _CHUNK_RE.match(p.name)))
        out, end = [], 0
        for i, (start, p) in enumerate(found):
            if start != end:
                p.unlink(missing_ok=True)  # a gap: not reachable
                continue
            try:
                rows = self._rows(p)
            except CorruptChunk as e:
                self._drop(p, [q for _, q in found[i + 1 :]], start, str(e))
                break
            out.append((start, p))
            end = start + rows
        return out

    def _drop(self, bad: Path, later: list[Path], start: int, why: str) -> None:
        self.dropped += 1
        for q in [bad, *later]:
            q.unlink(missing_ok=True)
            self._checked.pop(q.name, None)
        if self.warn is not None:
            self.warn(f"feature cache chunk {bad} is damaged ({why}); dropped, recomputing features from image {start}")

    def _rows(self, p: Path) -> int:
        """The chunk's row count, after reading it whole once (remembered while the file is unchanged)."""
        st = p.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        known = self._checked.get(p.name)
        if known is not None and known[0] == stamp:
            return known[1]
        rows = len(next(iter(self._load(p).values())))
        self._checked[p.name] = (stamp, rows)
        return rows

    def _load(self, p: Path) -> dict[str, np.ndarray]:
        """The chunk's feature arrays, checked; `CorruptChunk` when anything is wrong."""
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # BadZipFile, EOFError, ValueError, OSError, zlib.error ...
            raise CorruptChunk(_why(e)) from None
        rows = arrays.pop("rows", None)
        if rows is None or rows.shape != () or rows.dtype.kind not in "iu":
            raise CorruptChunk("no row count")
        rows = int(rows)
        start = int(_CHUNK_RE.match(p.name).group(1))  # type: ignore[union-attr]
        if rows < 1 or start + rows > self.n:
            raise CorruptChunk(f"{rows} rows at {start} of {self.n}")
        if not arrays or (self.dims is not None and set(arrays) != set(self.dims)):
            raise CorruptChunk(f"arrays {sorted(arrays)}")
        for k, a in arrays.items():
            want = (rows, self.dims[k]) if self.dims is not None else (rows, a.shape[-1] if a.ndim == 2 else -1)
            if a.shape != want or a.dtype.kind != "f":
                raise CorruptChunk(f"{k} has shape {a.shape} {a.dtype}, expected {want}")
        return arrays

    def done(self) -> int:
        chunks = self.chunks()
        if not chunks:
            return 0
        start, p = chunks[-1]
        return start + self._rows(p)

    def write(self, start: int, feats: dict[str, np.ndarray]) -> None:
        rows = len(next(iter(feats.values())))
        final = self.root / f"feat-{start:012d}.npz"
        tmp = self.root / f"feat-{start:012d}.{os.getpid()}.tmp.npz"  # never matched by _CHUNK_RE
        try:
            with open(tmp, "wb") as f:
                np.savez(f, rows=np.int64(rows), **feats)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> dict[str, np.ndarray]:
        """Every chunk's features, joined; `CorruptChunk` (after dropping it) when one went bad meanwhile."""
        parts: dict[str, list[np.ndarray]] = {}
        dropped = self.dropped
        found = self.chunks()
        if self.dropped != dropped:
            raise CorruptChunk("dropped while reading")
        for i, (start, p) in enumerate(found):
            try:
                arrays = self._load(p)
            except CorruptChunk as e:
                self._drop(p, [q for _, q in found[i + 1 :]], start, str(e))
                raise
            for k, a in arrays.items():
                parts.setdefault(k, []).append(a)
        return {k: np.concatenate(v, 0) for k, v in parts.items()}

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:100]}" if text else type(e).__name__


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
    for attempt in range(2):
        _fill(store, source, net, batch_size, chunk, progress if attempt == 0 else None)
        try:
            out = store.read()
            break
        except CorruptChunk:  # went bad after it was checked (read dropped it): compute those rows again, once
            if attempt:
                raise RuntimeError(f"{source.name}: the feature cache in {getattr(store, 'root', '?')} keeps getting damaged") from None
    got = len(next(iter(out.values()))) if out else 0
    if got != n:
        raise RuntimeError(f"{source.name}: extracted {got} feature rows for {n} images")
    return out


def _fill(store, source: ImageSource, net: FeatureNet, batch_size: int, chunk: int, progress) -> None:
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
