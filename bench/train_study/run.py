"""Training studies on Fashion-MNIST: domain FID against training steps, several runs compared.

Two studies (issue 13), each a list of runs trained with `adm train-diffusion` for the same number
of steps on the same data, architecture, batch and seed, checkpointed every --save-every steps:

  finetune     a model pre-trained on adm's synthetic shapes, fine-tuned on Fashion-MNIST with
               --init, against the same network trained from scratch on Fashion-MNIST
  objectives   ADM's hybrid loss against v-prediction, Min-SNR-5, P2 (γ = 1) and input
               perturbation (DDPM-IP, γ = 0.1), each from scratch

Every checkpoint is scored the same way: `adm sample` (--num images, DDIM --ddim steps, seeds
0..num-1, random classes) then `adm evaluate --features JUDGE` (FID, precision, recall) against
--ref-num real training images, in the 64-d feature space of a separately trained clean
classifier (the judge, trained here once). Every stage is skipped when its output exists, so a
killed study continues when the same command runs again. Writes OUT/results.json, OUT/table.md
and OUT/fid_vs_step.png (plus OUT/loss_curves.png with `adm plot`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ARCH = ["--preset", "small", "--model-channels", "32", "--num-res-blocks", "1", "--attention-resolutions", "8",
        "--dropout", "0", "--learn-sigma"]


def adm(*args: object, log: Path | None = None) -> str:
    cmd = [sys.executable, "-m", "adm_cli", *map(str, args)]
    print("$ adm", " ".join(map(str, args)), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"$ adm {' '.join(map(str, args))}\n{done.stderr}\n")
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return done.stdout


def runs_of(study: str, args: argparse.Namespace, work: Path) -> dict[str, list[object]]:
    """{run name: train-diffusion arguments after DATA} for a study."""
    common = [*ARCH, "--image-size", args.image_size, "--batch-size", args.batch_size, "--lr", args.lr,
              "--ema", "0.999", "--seed", 0]
    if study == "finetune":
        return {
            f"fine-tuned from {args.pretrain_name}": ["--init", work / "pretrain", "--batch-size", args.batch_size, "--lr", args.lr,
                                       "--ema", "0.999", "--seed", 0, "--preset", "small"],
            "from scratch": common,
        }
    if study == "objectives":
        return {
            "ADM hybrid (ε, λ=0.001)": common,
            "v-prediction": [*common, "--prediction", "v"],
            "Min-SNR-5": [*common, "--min-snr-gamma", 5],
            "P2 (γ=1, k=1)": [*common, "--p2-gamma", 1, "--p2-k", 1],
            "input perturbation (γ=0.1)": [*common, "--input-perturbation", 0.1],
        }
    raise SystemExit(f"unknown study {study!r}")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def train(data: str, run: Path, flags: list[object], steps: int, save_every: int, log: Path) -> float:
    """Train (or continue) to `steps`; returns the wall seconds of this invocation."""
    start = time.perf_counter()
    if (run / "run.json").exists():
        adm("train-diffusion", "--out", run, "--resume", "--steps", steps, "--quiet", log=log)
    else:
        adm("train-diffusion", data, "--out", run, *flags, "--steps", steps, "--save-every", save_every,
            "--keep", 1000, "--log-every", 25, "--quiet", log=log)
    return time.perf_counter() - start


def score(args: argparse.Namespace, ckpt: Path, samples: Path, ref: Path, log: Path) -> dict:
    if not samples.exists():
        adm("sample", ckpt, "--num", args.num, "--batch-size", 100, "--seed", 0, "--ddim", args.ddim,
            "--precision", "fp32", "--out", samples, "--quiet", log=log)
    return json.loads(adm("evaluate", ref, samples, "--features", args.judge_run, "--metrics", "fid,precision,recall",
                          "--json", "--quiet", log=log))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study", choices=("finetune", "objectives"))
    p.add_argument("--data", default="../shared/data/fashion-mnist")
    p.add_argument("--work", type=Path, required=True, help="runs, samples and logs (kept; a rerun continues)")
    p.add_argument("--out", type=Path, required=True, help="results.json, table.md, figures")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--num", type=int, default=200, help="samples per checkpoint")
    p.add_argument("--ddim", type=int, default=20)
    p.add_argument("--ref-num", type=int, default=2000)
    p.add_argument("--judge-minutes", type=float, default=4)
    p.add_argument("--judge", type=Path, help="an existing judge run (default: train one in WORK/judge)")
    p.add_argument("--pretrain-data", default="synthetic:5000", help="finetune: what the model is pre-trained on")
    p.add_argument("--pretrain-name", help="finetune: how the table names the pre-training data (default: shapes / the file)")
    p.add_argument("--test-data", help="real images never in the reference, for the floor (default: DATA's t10k file)")
    args = p.parse_args()
    args.pretrain_name = args.pretrain_name or ("shapes" if args.pretrain_data.startswith("synthetic") else Path(args.pretrain_data).stem)
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{args.study}.log"

    args.judge_run = args.judge or work / "judge"
    if not (args.judge_run / "checkpoints").is_dir() or not any((args.judge_run / "checkpoints").glob("*.pt")):
        adm("train-classifier", args.data, "--out", args.judge_run, "--clean", "--image-size", args.image_size,
            "--model-channels", 32, "--val-fraction", 0.02, "--eval-every", 100, "--minutes", args.judge_minutes,
            "--quiet", log=log)
    ref = work / f"ref-{args.ref_num}.npz"
    if not ref.exists():
        adm("ref-batch", args.data, "--out", ref, "--no-stats", "--num", args.ref_num, "--image-size", args.image_size,
            "--quiet", log=log)
    if args.study == "finetune":
        train(args.pretrain_data, work / "pretrain", [*ARCH, "--image-size", args.image_size, "--channels", 1,
              "--batch-size", args.batch_size, "--lr", args.lr, "--ema", "0.999", "--seed", 0],
              args.pretrain_steps, args.pretrain_steps, log)

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("runs", {})
    # The floor: --num real test-split images (never in the reference) scored the same way.
    real = work / f"real-test-{args.num}.npz"
    if not real.exists():
        adm("ref-batch", args.test_data or Path(args.data) / "t10k-images-idx3-ubyte.gz", "--out", real, "--no-stats", "--num", args.num,
            "--image-size", args.image_size, "--quiet", log=log)
    if "floor" not in results:
        metrics = json.loads(adm("evaluate", ref, real, "--features", args.judge_run, "--metrics", "fid,precision,recall",
                                 "--json", "--quiet", log=log))
        results["floor"] = {k: metrics[k] for k in ("fid", "precision", "recall")}
    results["setup"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    for name, flags in runs_of(args.study, args, work).items():
        run = work / args.study / slug(name)
        seconds = train(args.data, run, flags, args.steps, args.save_every, log)
        entry = results["runs"].setdefault(name, {"flags": [str(f) for f in flags], "points": {}})
        entry["train_seconds_last_invocation"] = round(seconds, 1)
        ckpts = sorted((run / "checkpoints").glob("step-*.pt"))
        if args.study == "finetune" and name.startswith("fine-tuned"):  # step 0: the pre-trained model itself
            ckpts = [sorted((work / "pretrain" / "checkpoints").glob("step-*.pt"))[-1], *ckpts]
        for ckpt in ckpts:
            step = 0 if ckpt.parent.parent.name == "pretrain" else int(ckpt.stem.split("-")[1])
            if str(step) in entry["points"]:
                continue
            metrics = score(args, ckpt, work / "samples" / args.study / f"{slug(name)}-{step}.npz", ref, log)
            entry["points"][str(step)] = {k: metrics[k] for k in ("fid", "precision", "recall")}
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    report(results, out)


def report(results: dict, out: Path) -> None:
    """table.md, fid_vs_step.png (FID, precision, recall against steps) and loss_curves.png (`adm plot`)."""
    names = list(results["runs"])
    steps = sorted({int(s) for r in results["runs"].values() for s in r["points"]})
    lines = ["| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for s in steps:
        cells = []
        for n in names:
            pt = results["runs"][n]["points"].get(str(s))
            cells.append(f"{pt['fid']:.3f} ({pt['precision']:.2f}/{pt['recall']:.2f})" if pt else "")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    floor = results.get("floor")
    if floor:
        lines.append(f"| real test images | {floor['fid']:.3f} ({floor['precision']:.2f}/{floor['recall']:.2f}) |" + " |" * (len(names) - 1))
    (out / "table.md").write_text("FID (precision / recall) in the judge's feature space\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    from adm_cli.charts import PALETTE, Panel, Series, draw_chart, write_png

    def panel(key: str, title: str, ylog: bool) -> Panel:
        series = []
        for i, (name, run) in enumerate(results["runs"].items()):
            pts = sorted((int(s), p[key]) for s, p in run["points"].items())
            series.append(Series(name, [x for x, _ in pts], [y for _, y in pts], color=PALETTE[i % len(PALETTE)]))
        hlines = [(floor[key], "real test images")] if floor else []
        return Panel(title, series, ylog=ylog, xlabel="training step", hlines=hlines)

    legend = [(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(results["runs"])]
    image = draw_chart([panel("fid", "FID (judge features, lower is better)", True), panel("precision", "precision", False),
                        panel("recall", "recall", False)], title="Fashion-MNIST: quality against training steps",
                       size=(1200, 460), legend=legend)
    write_png(out / "fid_vs_step.png", image)
    runs = [str(Path(results["setup"]["work"]) / results["setup"]["study"] / slug(n)) for n in results["runs"]]
    adm("plot", *runs, "--out", out / "loss_curves.png", "--overwrite", "--smooth", 4, "--quantities", "loss,mse,vb,grad_norm", "--quiet")

if __name__ == "__main__":
    main()
