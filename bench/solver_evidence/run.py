"""Quality per network evaluation: DDIM and the fast solvers against all-steps DDPM, on real data.

    python bench/solver_evidence/run.py --diffusion runs/fm-cfg --classifier runs/fm-clf \
        --judge runs/fm-judge --data ../shared/data/fashion-mnist --work /tmp/solver-evidence \
        --out bench/solver_evidence/results/fashion-mnist --num 500

For every guidance mode (the conditional model alone; classifier guidance; classifier-free
guidance), every sampler and every NFE, `adm sample` draws --num images (seeds 0..num-1, random
classes, the same for every cell), and `adm evaluate --features JUDGE` scores them against a
reference batch of real training images in the feature space of a separately trained clean
classifier: FID, precision, recall. The reference rows of each mode are DDPM with
--reference-steps (conditional mode; default: every trained step) or --guided-reference-steps
(the guided modes; default: the same), comma-separated lists where "all" is every trained step. Every call is a subprocess of `python -m adm_cli`; finished sample
files are kept, so a killed run continues. Writes OUT/results.json, OUT/table.md and
OUT/fid_vs_nfe.png (drawn with adm_cli.charts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from adm_cli import charts as plot

HERE = Path(__file__).resolve().parent

SOLVERS = ("ddim", "dpm++2m", "dpm++3m", "unipc", "heun")
COLORS = {"ddim": (120, 120, 120), "dpm++2m": (31, 119, 180), "dpm++3m": (44, 160, 44), "unipc": (214, 39, 40),
          "heun": (148, 103, 189)}


def adm(*args: object, threads: int | None = None) -> str:
    cmd = [sys.executable, "-m", "adm_cli", *map(str, args)]
    print("$ adm", " ".join(map(str, args)), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return done.stdout


def modes(args: argparse.Namespace) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {"conditional": []}
    if args.guidance:
        out[f"classifier s={args.guidance:g}"] = ["--classifier", args.classifier, "--guidance", args.guidance]
    if args.cfg_scale:
        out[f"cfg w={args.cfg_scale:g}"] = ["--cfg-scale", args.cfg_scale]
    return out


def sample(args: argparse.Namespace, out: Path, flags: list[object]) -> float:
    """Draw the cell's images (skipped when the file exists); returns seconds spent (0 if skipped)."""
    if out.exists():
        return 0.0
    start = time.perf_counter()
    adm("sample", args.diffusion, "--num", args.num, "--batch-size", args.batch_size, "--seed", 0,
        "--precision", args.precision, "--out", out, "--quiet", *flags, threads=args.threads)
    return time.perf_counter() - start


def evaluate(args: argparse.Namespace, ref: Path, samples: Path) -> dict:
    return json.loads(adm("evaluate", ref, samples, "--features", args.judge, "--metrics", "fid,precision,recall",
                          "--json", "--quiet", threads=args.threads))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--diffusion", required=True, help="class-conditional run or checkpoint with a null class")
    p.add_argument("--classifier", required=True, help="noise-aware classifier for guidance")
    p.add_argument("--judge", required=True, help="clean classifier: the feature space of FID / P / R")
    p.add_argument("--data", required=True, help="real images for the reference batch")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--ref-num", type=int, default=5000)
    p.add_argument("--nfe", default="5,10,15,20,50")
    p.add_argument("--samplers", default=",".join(SOLVERS))
    p.add_argument("--guidance", type=float, default=2.0, help="classifier guidance scale (0: skip the mode)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance w (0: skip the mode)")
    p.add_argument("--reference-steps", default="all", help="DDPM steps of the conditional mode's references")
    p.add_argument("--guided-reference-steps", default=None, help="...of the guided modes' (default: the same)")
    p.add_argument("--no-reference", action="store_true", help="skip the DDPM reference cells (time-limited runs)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--image-size", type=int, default=None, help="reference batch size (default: the data's)")
    p.add_argument("--jobs", type=int, default=1, help="cells drawn at once (each with cpu_count/jobs threads)")
    args = p.parse_args()
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    nfes = [int(k) for k in args.nfe.split(",")]
    samplers = args.samplers.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    ref = args.work / "ref.npz"
    if not ref.exists():
        size = ["--image-size", args.image_size] if args.image_size else []
        adm("ref-batch", args.data, "--out", ref, "--no-stats", "--num", args.ref_num, *size, "--quiet")
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"cells": {}}
    results["settings"] = {k: str(v) for k, v in vars(args).items()}

    todo = []
    for mode, guide in modes(args).items():
        tag = mode.split()[0]
        steps = args.reference_steps if mode == "conditional" else (args.guided_reference_steps or args.reference_steps)
        cells = [] if args.no_reference else [
            ("ddpm", f"ref-{k}", ["--sampler", "ddpm"] + ([] if k == "all" else ["--steps", k])) for k in steps.split(",")]
        cells += [(s, k, ["--sampler", s, "--nfe", k]) for s in samplers for k in nfes]
        for sampler, nfe, flags in cells:
            key = f"{mode} | {sampler} | {nfe}"
            if key not in results["cells"]:
                out = args.work / f"{tag}_{sampler}_{nfe}.npz"
                todo.append((key, mode, sampler, nfe, out, flags + guide))

    def cell(key, mode, sampler, nfe, out, flags):
        seconds = sample(args, out, flags)
        metrics = evaluate(args, ref, out)
        row = {"mode": mode, "sampler": sampler, "nfe": nfe, "seconds": seconds, "threads": args.threads, **metrics}
        if isinstance(nfe, str):  # a DDPM reference: nfe is "ref-STEPS"
            row["nfe"], row["reference_steps"] = None, nfe.removeprefix("ref-")
        return key, row

    # the longest cells (the references) first, so the jobs finish together
    todo.sort(key=lambda c: not isinstance(c[3], str))
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for done in as_completed([pool.submit(cell, *c) for c in todo]):
            key, row = done.result()
            results["cells"][key] = row
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(key, {k: row.get(k) for k in ("fid", "precision", "recall")}, flush=True)
    report(results, args.out, nfes, samplers)


def report(results: dict, out: Path, nfes: list[int], samplers: list[str]) -> None:
    """table.md and fid_vs_nfe.png from every cell in results (run again with the full lists to redraw)."""

    cells = results["cells"].values()
    by_mode: dict[str, list[dict]] = {}
    for c in cells:
        by_mode.setdefault(c["mode"], []).append(c)
    lines = []
    panels = []
    for mode, rows in by_mode.items():
        refs = [r for r in rows if r["nfe"] is None]
        lines += [f"### {mode}", "", "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "|---|" + "---:|" * len(nfes)]
        series = []
        for s in samplers:
            got = {r["nfe"]: r for r in rows if r["sampler"] == s}
            lines.append(f"| {s} | " + " | ".join(
                f"{got[k]['fid']:.3f} ({got[k]['precision']:.2f}/{got[k]['recall']:.2f})" if k in got else "—" for k in nfes) + " |")
            xs = [k for k in nfes if k in got]
            series.append(plot.Series(s, xs, [got[k]["fid"] for k in xs], color=COLORS.get(s)))
        hlines = []
        for ref in sorted(refs, key=lambda r: r.get("reference_steps") != "all"):
            label = f"DDPM, {'all' if ref.get('reference_steps') in (None, 'all') else ref['reference_steps']} steps"
            lines.append(f"| {label} | {ref['fid']:.3f} ({ref['precision']:.2f}/{ref['recall']:.2f}) |")
            hlines.append((ref["fid"], label))
        lines.append("")
        panels.append(plot.Panel(mode, series, ylog=True, ylabel="FID (judge features)", xlabel="network evaluations",
                                 hlines=hlines, xticks=nfes))
    (out / "table.md").write_text("FID (precision/recall) in the judge's feature space\n\n" + "\n".join(lines))
    if panels:
        plot.line_chart(out / "fid_vs_nfe.png", panels, title="Quality per network evaluation",
                        size=(420 * len(panels), 420))


if __name__ == "__main__":
    main()
