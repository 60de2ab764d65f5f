#!/usr/bin/env python
"""Speed of `adm evaluate`: Precision/Recall on pool3-like features, and Inception feature extraction.

Two modes:

    pr        adm_cli.evaluate.precision_recall.precision_recall(ref, samples) on synthetic
              non-negative "pool3-like" features (np.abs(N(0, 1)) * 0.3, float32, seeded), against
              a NumPy port of the reference evaluator's algorithm (guided-diffusion@22e0df8
              evaluations/evaluator.py: ManifoldEstimator.manifold_radii + evaluate_pr, with its
              DistanceBlock in float32: see `RefManifoldEstimator`). Each implementation runs in
              its own fresh Python process, so that its peak RSS (ru_maxrss) is its own.
    features  images/s of adm_cli.evaluate.nets.InceptionFeatures (FIDInception with seeded
              random weights, tests/eval_helpers.random_inception_state) on uint8 NHWC inputs of
              several sizes, the split between the TF1 resize and the network, and optionally
              torchvision's inception_v3 forward at 299x299 as a reference point for the network.

    python bench/bench_evaluate.py pr --quick                      # 5000 x 2000, ~10 s
    python bench/bench_evaluate.py pr --threads 2                  # 50000 samples x 10000 ref
    python bench/bench_evaluate.py features --threads 2 --torchvision
    python bench/bench_evaluate.py features --device cuda --batch 256 --batches 10
    python bench/bench_evaluate.py features-versus --threads 2 --rounds 5   # adm vs plain vs torchvision, alternated

Every measurement records os.getloadavg() before and after it: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FEATURE_DIM = 2048
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ----------------------------------------------------------------------------------------------
# Shared helpers


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(threads: int) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "threads": threads,
        "thread_env": {k: os.environ.get(k) for k in THREAD_VARS},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def set_threads(threads: int, *, torch_too: bool = True) -> None:
    """Thread counts for OpenMP / BLAS (this process's children; BLAS libraries already loaded read
    them at load time, hence the workers get them in their environment) and torch."""
    for k in THREAD_VARS:
        os.environ[k] = str(threads)
    if torch_too:
        import torch

        torch.set_num_threads(threads)


def pool3_like(n: int, seed: int, dim: int = FEATURE_DIM) -> np.ndarray:
    """Non-negative float32 features like Inception's pool_3 (post-ReLU averages): |N(0,1)| * 0.3."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    np.abs(x, out=x)
    x *= np.float32(0.3)
    return x


def code_version() -> dict:
    """sha256 (first 12 hex digits) and mtime of the measured modules: results tie to a version."""
    import hashlib

    out = {}
    for name in ("precision_recall", "nets", "inception", "resize", "features"):
        p = REPO / "adm_cli" / "evaluate" / f"{name}.py"
        out[name] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:12], "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(p.stat().st_mtime))}
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        pass
    return out


def write_json(path: Path, result: dict) -> None:
    result = {**result, "code": code_version(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------
# The reference evaluator's P/R algorithm in NumPy.
#
# A transcription, for benchmarking only, of guided-diffusion@22e0df8 evaluations/evaluator.py:
# `ManifoldEstimator.manifold_radii`, `ManifoldEstimator.evaluate_pr`, `DistanceBlock`,
# `_batch_pairwise_distances` and `_numpy_partition` (itself adapted there from
# kynkaat/improved-precision-and-recall-metric). Row/column batches of 10000, the full-row
# `distance_batch` buffer (row_batch_size x N float32), `np.partition` with kth = arange(k+1)
# over chunks in a ThreadPool, and `less_thans`' broadcast comparisons are kept. One change:
# the reference's DistanceBlock computes each block in TF float16 on a GPU (falling back to
# float32 if the block is not finite); here the block is computed in float32 (NumPy's float16
# matmul has no BLAS and is unusably slow), so the finite check/fallback is moot and dropped.


def ref_batch_pairwise_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    norm_u = np.sum(np.square(u), 1).reshape(-1, 1)
    norm_v = np.sum(np.square(v), 1).reshape(1, -1)
    return np.maximum(norm_u - 2 * np.matmul(u, v.T) + norm_v, np.float32(0.0))


class RefDistanceBlock:
    def pairwise_distances(self, u, v):
        return ref_batch_pairwise_distances(u, v)

    def less_thans(self, batch_1, radii_1, batch_2, radii_2):
        dist32 = self.pairwise_distances(batch_1, batch_2).astype(np.float32)[..., None]
        batch_1_in = np.any(dist32 <= radii_2, axis=1)
        batch_2_in = np.any(dist32 <= radii_1[:, None], axis=0)
        return batch_1_in, batch_2_in


def ref_numpy_partition(arr, kth, workers, **kwargs):
    # The reference uses min(multiprocessing.cpu_count(), len(arr)) workers; here the --threads
    # value (equal to cpu_count() on the 2-core benchmark machine).
    num_workers = min(workers, len(arr))
    chunk_size = len(arr) // num_workers
    extra = len(arr) % num_workers
    start_idx = 0
    batches = []
    for i in range(num_workers):
        size = chunk_size + (1 if i < extra else 0)
        batches.append(arr[start_idx : start_idx + size])
        start_idx += size
    with ThreadPool(num_workers) as pool:
        return list(pool.map(partial(np.partition, kth=kth, **kwargs), batches))


class RefManifoldEstimator:
    def __init__(self, row_batch_size=10000, col_batch_size=10000, nhood_sizes=(3,), workers=2):
        self.distance_block = RefDistanceBlock()
        self.row_batch_size = row_batch_size
        self.col_batch_size = col_batch_size
        self.nhood_sizes = list(nhood_sizes)
        self.num_nhoods = len(nhood_sizes)
        self.workers = workers

    def manifold_radii(self, features: np.ndarray) -> np.ndarray:
        num_images = len(features)
        radii = np.zeros([num_images, self.num_nhoods], dtype=np.float32)
        distance_batch = np.zeros([self.row_batch_size, num_images], dtype=np.float32)
        seq = np.arange(max(self.nhood_sizes) + 1, dtype=np.int32)
        for begin1 in range(0, num_images, self.row_batch_size):
            end1 = min(begin1 + self.row_batch_size, num_images)
            row_batch = features[begin1:end1]
            for begin2 in range(0, num_images, self.col_batch_size):
                end2 = min(begin2 + self.col_batch_size, num_images)
                col_batch = features[begin2:end2]
                distance_batch[0 : end1 - begin1, begin2:end2] = self.distance_block.pairwise_distances(row_batch, col_batch)
            radii[begin1:end1, :] = np.concatenate(
                [x[:, self.nhood_sizes] for x in ref_numpy_partition(distance_batch[0 : end1 - begin1, :], seq, self.workers, axis=1)],
                axis=0,
            )
        return radii

    def evaluate_pr(self, features_1, radii_1, features_2, radii_2):
        features_1_status = np.zeros([len(features_1), radii_2.shape[1]], dtype=bool)
        features_2_status = np.zeros([len(features_2), radii_1.shape[1]], dtype=bool)
        for begin_1 in range(0, len(features_1), self.row_batch_size):
            end_1 = begin_1 + self.row_batch_size
            batch_1 = features_1[begin_1:end_1]
            for begin_2 in range(0, len(features_2), self.col_batch_size):
                end_2 = begin_2 + self.col_batch_size
                batch_2 = features_2[begin_2:end_2]
                batch_1_in, batch_2_in = self.distance_block.less_thans(batch_1, radii_1[begin_1:end_1], batch_2, radii_2[begin_2:end_2])
                features_1_status[begin_1:end_1] |= batch_1_in
                features_2_status[begin_2:end_2] |= batch_2_in
        return (
            np.mean(features_2_status.astype(np.float64), axis=0),
            np.mean(features_1_status.astype(np.float64), axis=0),
        )

    def compute_prec_recall(self, activations_ref, activations_sample):
        """The evaluator's `Evaluator.compute_prec_recall`."""
        radii_1 = self.manifold_radii(activations_ref)
        radii_2 = self.manifold_radii(activations_sample)
        pr = self.evaluate_pr(activations_ref, radii_1, activations_sample, radii_2)
        return (float(pr[0][0]), float(pr[1][0])), radii_1[:, 0], radii_2[:, 0]


# ----------------------------------------------------------------------------------------------
# pr mode


def pr_worker(args) -> None:
    """One implementation, in this (fresh) process; prints one JSON line."""
    set_threads(args.threads, torch_too=args.impl == "ours")  # the NumPy reference never imports torch
    base_rss = rss_mib()
    ref = pool3_like(args.n_ref, args.seed)
    samples = pool3_like(args.n_samples, args.seed + 1)
    warm_small = (pool3_like(64, 99), pool3_like(96, 98))
    phases: dict[str, float] = {}
    if args.impl in ("ours", "ours-fp32"):
        import torch

        import adm_cli.evaluate.precision_recall  # noqa: F401

        prmod = sys.modules["adm_cli.evaluate.precision_recall"]  # the package re-exports the function under this name

        torch.set_num_threads(args.threads)
        if args.impl == "ours-fp32":
            # Diagnostic only: every block takes the evaluator's float32 fallback path, i.e. the
            # same arithmetic as the NumPy port, to separate float16 effects from algorithm bugs.
            # (Private API: patch whichever version of the block-precision test the module has.)
            if hasattr(prmod, "_fp16_block_mode"):
                prmod._fp16_block_mode = lambda *a, **k: None
            else:
                prmod._fp16_block_finite = lambda *a, **k: False
        kw = {"block_size": args.block_size, "tile": args.tile, "device": args.device}

        def sync():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        prmod.precision_recall(*warm_small, **kw)  # libraries, thread pools, CUDA context
        sync()
        rss_before, peak_before, load_before = rss_mib(), peak_rss_mib(), loadavg()
        t0 = time.perf_counter()
        if args.phases:
            t = time.perf_counter()
            r_ref = prmod.manifold_radii(ref, **kw)
            phases["radii_ref"] = time.perf_counter() - t
            t = time.perf_counter()
            r_sam = prmod.manifold_radii(samples, **kw)
            phases["radii_samples"] = time.perf_counter() - t
            t = time.perf_counter()
            precision, recall = prmod.precision_recall(ref, samples, radii=(r_ref, r_sam), **kw)
            phases["cross"] = time.perf_counter() - t
        else:
            precision, recall = prmod.precision_recall(ref, samples, **kw)
            r_ref = r_sam = None
        sync()
        seconds = time.perf_counter() - t0
    else:
        est = RefManifoldEstimator(args.block_size, args.block_size, workers=args.threads)
        est.compute_prec_recall(*warm_small)
        rss_before, peak_before, load_before = rss_mib(), peak_rss_mib(), loadavg()
        t0 = time.perf_counter()
        if args.phases:
            t = time.perf_counter()
            radii_1 = est.manifold_radii(ref)
            phases["radii_ref"] = time.perf_counter() - t
            t = time.perf_counter()
            radii_2 = est.manifold_radii(samples)
            phases["radii_samples"] = time.perf_counter() - t
            t = time.perf_counter()
            pr = est.evaluate_pr(ref, radii_1, samples, radii_2)
            phases["cross"] = time.perf_counter() - t
            precision, recall = float(pr[0][0]), float(pr[1][0])
            r_ref, r_sam = radii_1[:, 0], radii_2[:, 0]
        else:
            (precision, recall), r_ref, r_sam = est.compute_prec_recall(ref, samples)
        seconds = time.perf_counter() - t0
    load_after = loadavg()
    if args.radii_dir and r_ref is not None:
        np.save(Path(args.radii_dir) / f"{args.impl}-ref.npy", np.asarray(r_ref, np.float32))
        np.save(Path(args.radii_dir) / f"{args.impl}-samples.npy", np.asarray(r_sam, np.float32))
    out = {
        "impl": args.impl,
        "seconds": seconds,
        "phases": phases or None,
        "precision": precision,
        "recall": recall,
        "peak_rss_mib": peak_rss_mib(),
        "rss_at_start_mib": base_rss,
        "rss_before_call_mib": rss_before,
        "peak_rss_before_call_mib": peak_before,
        "features_mib": (ref.nbytes + samples.nbytes) / 2**20,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "threads": args.threads,
        "device": args.device if args.impl != "ref" else "cpu (numpy)",
    }
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(impl: str, args, radii_dir: str | None) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "_pr-worker", "--impl", impl,
        "--n-ref", str(args.n_ref), "--n-samples", str(args.n_samples), "--seed", str(args.seed),
        "--threads", str(args.threads), "--block-size", str(args.block_size), "--tile", str(args.tile),
        "--device", args.device,
    ]
    if args.phases:
        cmd.append("--phases")
    if radii_dir:
        cmd += ["--radii-dir", radii_dir]
    env = dict(os.environ, **{k: str(args.threads) for k in THREAD_VARS})
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} worker failed (rc {proc.returncode}):\n{proc.stdout}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def compare_radii(radii_dir: Path) -> dict:
    out = {}
    for impl in ("ours", "ours-fp32"):
        for which in ("ref", "samples"):
            a, b = radii_dir / f"{impl}-{which}.npy", radii_dir / f"ref-{which}.npy"
            if not (a.exists() and b.exists()):
                continue
            ours, ref = np.load(a), np.load(b)
            rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)
            out[f"{impl}/{which}"] = {
                "max_rel_diff": float(rel.max()), "mean_rel_diff": float(rel.mean()),
                "equal_fraction": float(np.mean(ours == ref)),
                "median_ours": float(np.median(ours)), "median_ref": float(np.median(ref)),
            }
    return out


def pr_main(args) -> None:
    if args.quick:
        args.n_ref, args.n_samples = 2000, 5000
    impls = args.impls.split(",")
    set_threads(args.threads, torch_too=False)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        radii_dir = tmp if args.phases else None
        for rep in range(args.reps):
            for impl in impls:
                print(f"[rep {rep}] {impl}: {args.n_samples} samples x {args.n_ref} ref, load {loadavg()}", flush=True)
                r = run_worker(impl, args, radii_dir)
                r["rep"] = rep
                runs.append(r)
                print(
                    f"  {r['seconds']:.1f} s, P {r['precision']:.6f} R {r['recall']:.6f}, peak RSS {r['peak_rss_mib']:.0f} MiB"
                    f" (before call {r['rss_before_call_mib']:.0f}), phases {r['phases']}, load {r['loadavg_before']} -> {r['loadavg_after']}",
                    flush=True,
                )
        radii = compare_radii(Path(tmp)) if radii_dir else None
    summary = {}
    for impl in impls:
        rs = [r for r in runs if r["impl"] == impl]
        summary[impl] = {
            "seconds_median": statistics.median(r["seconds"] for r in rs),
            "seconds_best": min(r["seconds"] for r in rs),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rs),
            "precision": rs[0]["precision"],
            "recall": rs[0]["recall"],
        }
    for impl in ("ours", "ours-fp32"):
        if impl in summary and "ref" in summary:
            o, f = summary[impl], summary["ref"]
            o["ref_over_this_median"] = f["seconds_median"] / o["seconds_median"]
            o["ref_over_this_best"] = f["seconds_best"] / o["seconds_best"]
            o["precision_abs_diff_vs_ref"] = abs(o["precision"] - f["precision"])
            o["recall_abs_diff_vs_ref"] = abs(o["recall"] - f["recall"])
    print(json.dumps(summary, indent=1))
    result = {
        "bench": "evaluate-pr",
        "machine": machine_info(args.threads),
        "config": {
            "n_ref": args.n_ref, "n_samples": args.n_samples, "dim": FEATURE_DIM, "seed": args.seed,
            "features": "np.abs(default_rng(seed).standard_normal((N, 2048), float32)) * 0.3; ref seed, samples seed+1",
            "block_size": args.block_size, "tile": args.tile, "k": 3, "reps": args.reps, "phases": args.phases,
            "ref_impl": "NumPy port of guided-diffusion@22e0df8 ManifoldEstimator (float32 distance blocks)",
        },
        "runs": runs,
        "radii_vs_ref": radii,
        "summary": summary,
    }
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"evaluate-pr-{args.n_samples}x{args.n_ref}-t{args.threads}.json"
    write_json(out, result)


# ----------------------------------------------------------------------------------------------
# features mode



def throughput_row(what: str, size: int, batch: int, times: list[float], load_before) -> dict:
    """One feature-extraction result: seconds per batch and images per second (median, best)."""
    return {
        "what": what,
        "size": size,
        "batch": batch,
        "seconds": times,
        "s_per_batch_median": statistics.median(times),
        "img_per_s_median": batch / statistics.median(times),
        "img_per_s_best": batch / min(times),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }

def features_main(args) -> None:
    set_threads(args.threads)
    import torch

    from adm_cli.evaluate.features import exact_fp32
    from adm_cli.evaluate.inception import FIDInception
    from adm_cli.evaluate.nets import InceptionFeatures
    from tests.eval_helpers import random_inception_state

    if args.quick:
        args.batch, args.batches, args.sizes = 8, 2, "32,64"
    device = torch.device(args.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn, n):
        """Run fn once untimed, then n times timed; seconds per call."""
        fn()
        sync()
        times = []
        for _ in range(n):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return times

    net = FIDInception()
    net.load_state_dict(random_inception_state(args.seed))
    feats = InceptionFeatures(net, "random", device=device)
    rng = np.random.default_rng(args.seed)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        images = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
        load_before = loadavg()
        times = timed(lambda images=images: feats(images), args.batches)
        row = throughput_row("InceptionFeatures.__call__", size, args.batch, times, load_before)
        if size in [int(s) for s in args.breakdown_sizes.split(",") if s]:
            # The same steps as __call__, timed apart: uint8 -> device, resize + normalise, network.
            x_host = torch.from_numpy(np.ascontiguousarray(images))
            with torch.no_grad(), exact_fp32():
                t_to = timed(lambda x_host=x_host: x_host.to(device), args.breakdown_reps)
                x = x_host.to(device)
                t_pre = timed(lambda x=x: net.preprocess(x, resize=True), args.breakdown_reps)
                xp = net.preprocess(x, resize=True)
                t_net = timed(lambda xp=xp: net.features(xp), args.breakdown_reps)
            row["breakdown_s_median"] = {
                "to_device": statistics.median(t_to),
                "resize_normalise": statistics.median(t_pre),
                "network": statistics.median(t_net),
            }
            row["breakdown_loadavg_after"] = loadavg()
        rows.append(row)
        print(
            f"{size}x{size} batch {args.batch}: {row['img_per_s_median']:.2f} img/s median ({row['img_per_s_best']:.2f} best), "
            f"{row['s_per_batch_median']:.3f} s/batch, breakdown {row.get('breakdown_s_median')}, load {load_before} -> {row['loadavg_after']}",
            flush=True,
        )
    if args.torchvision:
        from torchvision.models import inception_v3

        tv = inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
        x = torch.randn(args.batch, 3, 299, 299, device=device)
        load_before = loadavg()
        with torch.no_grad(), exact_fp32():
            times = timed(lambda: tv(x), args.batches)
        row = throughput_row("torchvision inception_v3 forward at 299x299 (reference point, not a parity check)", 299, args.batch, times, load_before)
        rows.append(row)
        print(f"torchvision inception_v3 299x299 batch {args.batch}: {row['img_per_s_median']:.2f} img/s median ({row['img_per_s_best']:.2f} best), load {load_before} -> {row['loadavg_after']}")
    result = {
        "bench": "evaluate-features",
        "machine": machine_info(args.threads),
        "config": {"device": str(device), "batch": args.batch, "batches": args.batches, "sizes": sizes, "seed": args.seed,
                   "weights": "tests/eval_helpers.random_inception_state(seed)", "resize": "tf1", "peak_rss_mib": peak_rss_mib()},
        "rows": rows,
    }
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"evaluate-features-{device.type}-t{args.threads}.json"
    write_json(out, result)


# ----------------------------------------------------------------------------------------------


def versus_main(args) -> None:
    """Side by side, alternated in one process: adm's feature path (`InceptionFeatures.__call__`:
    uint8 images → TF1 resize → BN-folded, channels-last network), the plain `FIDInception`
    (BatchNorm unfolded, contiguous: adm before this change), and torchvision's inception_v3 on
    already-resized 299×299 input (its forward only: a lower bound of its cost). Each round
    runs each path once on the same batch; ratios are of medians over the rounds."""
    set_threads(args.threads)
    import torch
    from torchvision.models import inception_v3

    from adm_cli.evaluate.features import exact_fp32
    from adm_cli.evaluate.inception import FIDInception
    from adm_cli.evaluate.nets import InceptionFeatures
    from tests.eval_helpers import random_inception_state

    net = FIDInception()
    net.load_state_dict(random_inception_state(args.seed))
    feats = InceptionFeatures(net, "random")
    tv = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    images = np.random.default_rng(args.seed).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    x_tv = torch.randn(args.batch, 3, 299, 299)
    paths = {
        "adm InceptionFeatures (uint8 → features)": lambda: feats(images),
        "plain FIDInception (unfolded, contiguous)": lambda: net(torch.from_numpy(images)),
        "torchvision inception_v3 forward, 299×299 input": lambda: tv(x_tv),
    }
    times: dict[str, list[float]] = {k: [] for k in paths}
    load_before = loadavg()
    with torch.no_grad(), exact_fp32():
        for fn in paths.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in paths.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    rows = [throughput_row(name, args.size, args.batch, t, load_before) for name, t in times.items()]
    tv_rate = rows[2]["img_per_s_median"]
    for row in rows:
        row["x_torchvision_median"] = row["img_per_s_median"] / tv_rate
        print(f"{row['what']}: {row['img_per_s_median']:.2f} img/s median ({row['img_per_s_best']:.2f} best), "
              f"{row['x_torchvision_median']:.2f}× torchvision", flush=True)
    result = {
        "bench": "evaluate-features-versus",
        "machine": machine_info(args.threads),
        "config": {"batch": args.batch, "size": args.size, "rounds": args.rounds, "seed": args.seed,
                   "weights": "tests/eval_helpers.random_inception_state(seed)", "resize": "tf1"},
        "code": code_version(),
        "rows": rows,
    }
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"evaluate-features-versus-cpu-t{args.threads}.json"
    write_json(out, result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    def common(q):
        q.add_argument("--threads", type=int, default=2, help="torch / OpenMP / BLAS threads (default 2)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--device", default="cpu", help="cpu or cuda (pr: ours only; the NumPy reference is CPU)")
        q.add_argument("--quick", action="store_true")
        q.add_argument("--out", help="JSON file (default bench/results/evaluate-<mode>-...json)")

    pr = sub.add_parser("pr", help="Precision/Recall: ours vs the reference algorithm in NumPy")
    common(pr)
    pr.add_argument("--n-ref", type=int, default=10000)
    pr.add_argument("--n-samples", type=int, default=50000)
    pr.add_argument("--block-size", type=int, default=10000, help="the evaluator's row/column batch (default 10000)")
    pr.add_argument("--tile", type=int, default=2048, help="ours: tile inside a block (default 2048)")
    pr.add_argument("--impls", default="ours,ref", help="ours, ref, and the diagnostic ours-fp32 (float32 distances)")
    pr.add_argument("--reps", type=int, default=1, help="rounds, each running every implementation once")
    pr.add_argument("--phases", action="store_true", help="time radii(ref), radii(samples) and the cross pass apart, compare radii")

    w = sub.add_parser("_pr-worker")
    common(w)
    w.add_argument("--impl", choices=("ours", "ours-fp32", "ref"), required=True)
    w.add_argument("--n-ref", type=int, required=True)
    w.add_argument("--n-samples", type=int, required=True)
    w.add_argument("--block-size", type=int, default=10000)
    w.add_argument("--tile", type=int, default=2048)
    w.add_argument("--phases", action="store_true")
    w.add_argument("--radii-dir")

    f = sub.add_parser("features", help="InceptionFeatures images/s")
    common(f)
    f.add_argument("--sizes", default="32,64,256")
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--batches", type=int, default=3, help="timed batches per size (after one untimed)")
    f.add_argument("--breakdown-sizes", default="32,64,256", help="sizes whose resize/network split is timed")
    f.add_argument("--breakdown-reps", type=int, default=2)
    f.add_argument("--torchvision", action="store_true", help="also time torchvision inception_v3 at 299x299")

    v = sub.add_parser("features-versus", help="adm's features vs the plain network vs torchvision, alternated")
    common(v)
    v.add_argument("--size", type=int, default=64)
    v.add_argument("--batch", type=int, default=8)
    v.add_argument("--rounds", type=int, default=5)

    args = p.parse_args()
    if args.mode == "features-versus":
        versus_main(args)
    elif args.mode == "pr":
        pr_main(args)
    elif args.mode == "_pr-worker":
        pr_worker(args)
    else:
        features_main(args)


if __name__ == "__main__":
    main()
