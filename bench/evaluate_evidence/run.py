"""Does `adm evaluate --features` behave as a judge of 28×28 grayscale data?

Trains a small clean classifier on Fashion-MNIST (the adm CLI, a few CPU minutes), then scores
real and deliberately damaged image sets against a reference set of real training images in the
classifier's feature space: FID, precision and recall (`adm evaluate --features`), plus KID.
Expected: real held-out images score near the floor; noise and blur raise FID and lower
precision; keeping only three classes keeps precision but collapses recall.

    python bench/evaluate_evidence/run.py --data ../shared/data/fashion-mnist --work /tmp/eval-evidence \
        --out bench/evaluate_evidence/results/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from adm_cli.data.datasets import open_dataset


def adm(*args: str, env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", "adm_cli", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def blur(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im[..., 0]).filter(ImageFilter.GaussianBlur(radius)))[..., None] for im in images])


def build_sets(data: str, n_ref: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The reference (``n_ref`` training images) and the named image sets (``n`` each) scored
    against it: real held-out images, noised, blurred, and only 3 of the 10 classes."""
    rng = np.random.default_rng(seed)
    train = open_dataset(data, split="train")
    test = open_dataset(data, split="test")
    order = rng.permutation(len(train))
    ref_idx, other_idx = np.sort(order[:n_ref]), np.sort(order[n_ref : n_ref + n])
    ref_images, ref_labels = train.get(ref_idx)
    test_idx = np.sort(rng.choice(len(test), n, replace=False))
    real, labels = test.get(test_idx)
    noise = lambda s: np.clip(real.astype(np.float64) + rng.normal(0, s, real.shape), 0, 255).astype(np.uint8)  # noqa: E731
    all_test, all_labels = test.get(np.arange(len(test)))
    three = np.flatnonzero(np.isin(all_labels, [0, 1, 7]))[:n]  # T-shirt, trouser, sneaker
    sets = {
        "real train (held out from ref)": train.get(other_idx)[0],
        "real test": real,
        "test + noise σ=10": noise(10),
        "test + noise σ=25": noise(25),
        "test + noise σ=50": noise(50),
        "test, Gaussian blur r=1": blur(real, 1.0),
        "test, Gaussian blur r=2": blur(real, 2.0),
        "test, 3 of 10 classes": all_test[three],
    }
    return ref_images, ref_labels, sets


def file_name(name: str) -> str:
    return name.replace(" ", "_").replace("/", "").replace(",", "").replace("=", "").replace("σ", "s").replace("(", "").replace(")", "") + ".npz"


def write_results(out: Path, summary: dict, columns: dict[str, tuple[str, str]]) -> None:
    """``summary.json`` and ``table.md`` (one row per image set; ``columns``: key → (header, format))."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| image set (n) | " + " | ".join(h for h, _ in columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for r in summary["rows"]:
        lines.append(f"| {r['set']} ({r['n']}) | " + " | ".join(format(r[k], f) for k, (_, f) in columns.items()) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/fashion-mnist")
    p.add_argument("--work", default="/tmp/eval-evidence")
    p.add_argument("--out", default="bench/evaluate_evidence/results/fashion-mnist")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--n-ref", type=int, default=5000)
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    judge = work / "judge"
    if not (judge / "checkpoints").is_dir():
        t0 = time.time()
        adm("train-classifier", args.data, "--out", judge, "--clean", "--model-channels", 32, "--image-size", 28,
            "--minutes", args.minutes, "--device", "cpu", "-q", env=env)
        print(f"judge trained in {time.time() - t0:.0f} s", flush=True)

    ref_images, ref_labels, sets = build_sets(args.data, args.n_ref, args.n)
    np.savez(work / "ref.npz", ref_images, ref_labels)
    rows = []
    for name, images in sets.items():
        path = work / file_name(name)
        np.savez(path, images)
        t0 = time.time()
        record = json.loads(adm("evaluate", work / "ref.npz", path, "--features", judge, "--metrics", "fid,precision,recall,kid",
                                "--json", "-q", "--no-cache", env=env))
        rows.append({"set": name, "n": len(images), **{k: record[k] for k in ("fid", "precision", "recall", "kid")},
                     "seconds": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)
    judge_run = json.loads((judge / "run.json").read_text())
    summary = {"reference": f"{args.n_ref} Fashion-MNIST training images (seed 0)", "features": "adm clean classifier, t = 0",
               "judge_command": judge_run.get("command"), "rows": rows}
    write_results(out, summary, {"fid": ("FID", ".3f"), "precision": ("precision", ".3f"), "recall": ("recall", ".3f"),
                                 "kid": ("KID", ".4f")})


if __name__ == "__main__":
    main()
