"""`adm ref-batch`: a reference batch in OpenAI's layout for any data set.

OpenAI's reference batches (guided-diffusion ``evaluations/README.md``) hold statistics over
the whole data set (``mu, sigma`` of pool_3, ``mu_s, sigma_s`` of the spatial features) and a
subset of images in ``arr_0`` (10,000 there; used for precision and recall), with labels in
``arr_1``.  Here the subset is drawn uniformly without replacement by ``seed`` and kept in
data order; the statistics are float64 over every image.  Feature extraction is resumable
(chunks in ``OUT.partial/``) and the file appears, complete, under its name only at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from numpy.lib import format as npy_format

from adm_cli.data.datasets import ImageData
from adm_cli.reporting import Reporter

from .evaluator import EvaluateError
from .features import FeatureCache, FeatureNet, extract_features
from .fid import fid_statistics_streamed
from .sources import DatasetSource

__all__ = ["RefBatch", "build_reference_batch", "check_reference_batch", "choose_subset", "write_npz_streamed"]


@dataclass(frozen=True)
class RefBatch:
    path: Path
    n_images: int  # in the statistics
    n_stored: int  # in arr_0
    labels: bool


def choose_subset(n: int, k: int, seed: int) -> np.ndarray:
    """``min(n, k)`` distinct indices, uniform by ``seed``, sorted (all of them when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def write_npz_streamed(path: Path, members: Iterable[tuple[str, np.dtype, tuple[int, ...], Iterable[np.ndarray]]]) -> None:
    """An uncompressed (zip64) npz whose arrays are written block by block, as ``np.savez`` lays them out."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, dtype, shape, blocks in members:
            header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                npy_format.write_array_header_1_0(out, header)
                for block in blocks:
                    out.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def check_reference_batch(data: ImageData, out: Path, *, num_images: int, overwrite: bool) -> None:
    """What `build_reference_batch` refuses, checkable before any network loads."""
    if Path(out).suffix.lower() != ".npz":
        raise EvaluateError(f"{out}: a reference batch is an .npz file")
    if Path(out).exists() and not overwrite:
        raise EvaluateError(f"{out} exists; pass --overwrite to replace it")
    if len(data) < 2:
        raise EvaluateError(f"{data.source}: {len(data)} image(s); a reference batch needs at least 2")
    if num_images < 1:
        raise EvaluateError(f"--num must be positive, got {num_images}")


def build_reference_batch(
    data: ImageData,
    out: str | os.PathLike,
    net: FeatureNet | None,
    *,
    identity: str,
    num_images: int = 10000,
    seed: int = 0,
    batch_size: int = 64,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> RefBatch:
    """Write ``out`` (.npz): ``arr_0`` (≤ num_images images), ``arr_1`` (labels, if any), and the
    statistics of ``net``'s features over all of ``data`` (none when ``net`` is None: images only,
    for machines without the Inception weights or for ``adm evaluate --features``).  ``identity``
    names the data set and its preprocessing, so a resumed run refuses to mix chunks of different data."""
    reporter = reporter or Reporter(quiet=True)
    out = Path(out)
    check_reference_batch(data, out, num_images=num_images, overwrite=overwrite)
    n = len(data)
    work = out.with_name(out.name + ".partial")
    stats = {} if net is None else _statistics(data, net, work, identity, batch_size, reporter)
    subset = choose_subset(n, num_images, seed)
    images0, labels0 = data.get(subset[:1])
    shape = (len(subset), *images0.shape[1:])

    def image_blocks():
        for i in range(0, len(subset), batch_size):
            yield data.get(subset[i : i + batch_size])[0]

    members = [("arr_0", np.uint8, shape, image_blocks())]
    if labels0 is not None:
        members.append(("arr_1", np.int64, (len(subset),), (data.get(subset)[1],)))
    names = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
    for kind, s in stats.items():
        mu_name, sigma_name = names.get(kind, (f"mu_{kind}", f"sigma_{kind}"))
        members += [(mu_name, np.float64, s.mu.shape, (s.mu,)), (sigma_name, np.float64, s.sigma.shape, (s.sigma,))]
    meta = json.dumps({"source": identity, "features": net.id if net else None, "n_images": n, "seed": seed}).encode()
    members.append(("adm_meta", np.uint8, (len(meta),), (np.frombuffer(meta, np.uint8),)))  # JSON bytes
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write_npz_streamed(tmp, members)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    shutil.rmtree(work, ignore_errors=True)
    return RefBatch(out, n, len(subset), labels0 is not None)


def _statistics(data: ImageData, net: FeatureNet, work: Path, identity: str, batch_size: int, reporter: Reporter):
    """μ, Σ of every feature kind over all of ``data``, from resumable chunks in ``work``."""
    n = len(data)
    source = DatasetSource(data, name=str(data.source), identity=identity)
    cache = FeatureCache(work, n=n, net_id=f"{net.id}|{source.content_id()[:16]}", source=identity, dims=net.dims, warn=reporter.warn)
    done = cache.done()
    if done:
        reporter.info(f"resuming: features of {done} of {n} images are in {work}")
    with reporter.progress("features", n) as tick:
        extract_features(source, net, batch_size=batch_size, cache=cache, progress=tick)

    paths = [p for _, p in cache.chunks()]  # checked once; each pass reads only one array per chunk

    def column(kind: str):
        def chunks():
            for p in paths:
                with np.load(p) as z:
                    yield z[kind]

        return chunks

    return {kind: fid_statistics_streamed(column(kind)) for kind in net.dims}
