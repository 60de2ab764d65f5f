"""Evidence that `adm` training works: train, guide, sample, judge, plot — one reproducible pipeline.

    python bench/train_evidence/run.py --out runs/evidence --diffusion-minutes 5 \
        --classifier-minutes 1 --clean-minutes 0.5

Stages (each skips when its outputs exist, so an interrupted pipeline continues where it stopped;
every `adm` call is a subprocess of `sys.executable -m adm_cli`, and any failure stops the
pipeline with the command and the end of its log):

  1. diffusion   adm train-diffusion DATA (class-conditional, learned sigma, hybrid loss: the
                 --preset, default `small`, at the data's native size) -> OUT/diffusion
  2. classifier  adm train-classifier --diffusion OUT/diffusion (noise-aware, for guidance)
                 -> OUT/classifier
  3. clean       adm train-classifier --clean (t = 0 only): the judge -> OUT/clean
  4. samples     for every guidance scale s and class c:
                 adm sample OUT/diffusion [--classifier OUT/classifier --guidance s] --class c
                     --seed 1000*c --ddim D --num K -> OUT/samples/s{s}_c{c}.npz
                 (s = 0: the conditional model alone, no classifier)
  5. judge       the clean classifier (EMA weights, t = 0) on every sample (accuracy w.r.t. the
                 requested class, mean p(requested class), confusion matrix) and on the real test
                 split; diversity = mean pairwise L2 distance between samples of one class in
                 [0, 1] pixel units (real test images of one class for reference) -> OUT/judge.json
  6. report      OUT/grids/s{s}.png (one row per class; red frame: the judge disagrees),
                 OUT/grids/compare.png, OUT/figures/*.png (plot.py), OUT/summary.json, OUT/summary.md

Training budgets: --X-minutes is the run's total training time (a resumed run gets what is left,
from the `elapsed_s` of its newest checkpoint); --X-steps its total step count. Samples are
redone when the diffusion or classifier checkpoint they came from changed (new training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import plot

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
STAGES = ("diffusion", "classifier", "clean", "samples", "judge", "report")


# ----------------------------------------------------------------------------- small helpers


def sampler_flags(args: argparse.Namespace) -> list[Any]:
    return ["--steps", args.ddpm_steps] if args.ddpm_steps else ["--ddim", args.ddim]


def sampler_label(args: argparse.Namespace) -> str:
    return f"DDPM {args.ddpm_steps} steps" if args.ddpm_steps else f"DDIM {args.ddim}"


def log(message: str) -> None:
    print(f"[evidence {time.strftime('%H:%M:%S')}] {message}", flush=True)


class PipelineError(RuntimeError):
    pass


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def scale_tag(s: float) -> str:
    return f"{s:g}"


def adm(*args: str) -> list[str]:
    return [sys.executable, "-m", "adm_cli", *[str(a) for a in args]]


def quote(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


class State:
    """OUT/pipeline.json: the commands each stage ran, their wall times and results (kept across resumes)."""

    def __init__(self, out: Path):
        self.path = out / "pipeline.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {"invocations": [], "wall_s": 0.0})

    def record(self, name: str, cmd: list[str] | str, wall: float, **extra: Any) -> None:
        st = self.stage(name)
        st["invocations"].append({"command": cmd if isinstance(cmd, str) else quote(cmd), "wall_s": round(wall, 2),
                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra})
        st["wall_s"] = round(st["wall_s"] + wall, 2)
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def run_logged(cmd: list[str], logfile: Path, *, echo: bool = True) -> float:
    """Run cmd, streaming its output to the terminal (echo) and to logfile; raise on failure."""
    cmd = [str(c) for c in cmd]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"$ {quote(cmd)}")
    start = time.monotonic()
    with open(logfile, "a") as f:
        f.write(f"\n$ {quote(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if echo:
                sys.stdout.write("    " + line)
                sys.stdout.flush()
        rc = proc.wait()
    wall = time.monotonic() - start
    if rc != 0:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-25:])
        raise PipelineError(f"command failed (exit {rc}) after {wall:.1f}s:\n  {quote(cmd)}\nlog: {logfile}\n--- last lines ---\n{tail}")
    return wall


def run_parallel(jobs: list[tuple[list[str], Path]], parallel: int) -> list[float]:
    """Run independent commands, at most `parallel` at a time, each logging to its own file."""
    if parallel <= 1:
        return [run_logged(cmd, lf, echo=False) for cmd, lf in jobs]
    walls: list[float] = [0.0] * len(jobs)
    pending = list(enumerate(jobs))
    running: list[tuple[int, subprocess.Popen, float, Any]] = []
    failure: str | None = None
    while pending or running:
        while pending and len(running) < parallel and failure is None:
            i, (cmd, lf) = pending.pop(0)
            cmd = [str(c) for c in cmd]
            lf.parent.mkdir(parents=True, exist_ok=True)
            fh = open(lf, "a")  # noqa: SIM115 (closed when the process ends)
            fh.write(f"\n$ {quote(cmd)}\n")
            fh.flush()
            log(f"$ {quote(cmd)}")
            running.append((i, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT), time.monotonic(), fh))
        if failure is not None:
            pending.clear()
        time.sleep(0.2)
        still = []
        for i, proc, t0, fh in running:
            rc = proc.poll()
            if rc is None:
                still.append((i, proc, t0, fh))
                continue
            fh.close()
            walls[i] = time.monotonic() - t0
            if rc != 0 and failure is None:
                cmd, lf = jobs[i]
                tail = "".join(lf.read_text().splitlines(keepends=True)[-25:])
                failure = f"command failed (exit {rc}):\n  {quote(cmd)}\nlog: {lf}\n--- last lines ---\n{tail}"
        running = still
    if failure:
        raise PipelineError(failure)
    return walls


# ----------------------------------------------------------------------------- run directories


def run_status(run_dir: Path) -> dict[str, Any]:
    """What a training run directory holds: newest checkpoint step, its elapsed time, last metrics."""
    status: dict[str, Any] = {"exists": (run_dir / "run.json").is_file(), "step": 0, "elapsed_s": 0.0, "checkpoint": None}
    ckpts = sorted((run_dir / "checkpoints").glob("step-*.pt")) if (run_dir / "checkpoints").is_dir() else []
    if ckpts:
        status["checkpoint"] = ckpts[-1]
        status["step"] = int(ckpts[-1].stem.split("-")[1])
    records = plot.read_metrics(run_dir / "metrics.jsonl")
    upto = [r for r in records if r.get("step", 0) <= status["step"]]
    if upto:
        status["elapsed_s"] = float(upto[-1].get("elapsed_s", 0.0))
    status["records"] = records
    return status


def without(opts: list[str], flags: tuple[str, ...]) -> list[str]:
    """Drop `--flag value` pairs: a resumed run keeps its stored settings, and adm refuses them."""
    out, skip = [], False
    for word in opts:
        if skip:
            skip = False
        elif word in flags:
            skip = True
        else:
            out.append(word)
    return out


def train_stage(name: str, run_dir: Path, new_cmd: list[str], run_opts: list[str], *, steps: int | None,
                minutes: float | None, args, state: State) -> None:
    """Start, continue or skip a training run so that it reaches `steps` / `minutes` in total."""
    st = run_status(run_dir)
    if args.skip_train:
        if st["checkpoint"] is None:
            raise PipelineError(f"--skip-train: {run_dir} has no checkpoint; run without --skip-train first")
        log(f"stage {name}: skipped (--skip-train; {run_dir.name} at step {st['step']})")
        return
    if not st["exists"]:
        cmd = new_cmd + run_opts
        if steps is not None:
            cmd += ["--steps", str(steps)]
        if minutes is not None:
            cmd += ["--minutes", f"{minutes:g}"]
        log(f"stage {name}: new run -> {run_dir}")
    else:
        done_steps = steps is not None and st["step"] >= steps
        remaining = None if minutes is None else minutes * 60 - st["elapsed_s"]
        done_time = remaining is not None and remaining < max(2.0, 0.02 * minutes * 60)
        if st["checkpoint"] is not None and (done_steps or done_time):
            log(f"stage {name}: done already ({run_dir.name} at step {st['step']}, {st['elapsed_s'] / 60:.2f} min of training)")
            return
        kind = "train-diffusion" if name == "diffusion" else "train-classifier"
        cmd = adm(kind, "--out", run_dir, "--resume") + without(run_opts, ("--val-fraction", "--precision"))
        if steps is not None:
            cmd += ["--steps", str(steps)]
        if remaining is not None:
            cmd += ["--minutes", f"{remaining / 60:.4g}"]
        log(f"stage {name}: resuming {run_dir} at step {st['step']} ({st['elapsed_s'] / 60:.2f} min trained)")
    wall = run_logged(cmd, args.out / "logs" / f"{name}.log")
    after = run_status(run_dir)
    state.record(name, cmd, wall, step=after["step"], elapsed_s=after["elapsed_s"])
    log(f"stage {name}: step {after['step']}, {after['elapsed_s'] / 60:.2f} min of training, {wall:.1f}s wall")


def device_flags(args) -> list[str]:
    flags = []
    if args.device:
        flags += ["--device", args.device]
    if args.precision:
        flags += ["--precision", args.precision]
    return flags


def image_size_of(run_dir: Path) -> int:
    desc = json.loads((run_dir / "run.json").read_text())
    cfg = desc["config"]
    return int((cfg.get("unet") or cfg.get("classifier"))["image_size"])


def num_classes_of(run_dir: Path) -> int:
    desc = json.loads((run_dir / "run.json").read_text())
    n = desc["data"].get("num_classes")
    if not n:
        raise PipelineError(f"{run_dir}: the data has no classes; class-conditional evidence needs labelled data")
    return int(n)


# ----------------------------------------------------------------------------- sampling


def samples_meta(args) -> dict[str, Any]:
    diff = run_status(args.out / "diffusion")
    clf = run_status(args.out / "classifier")
    return {
        "diffusion_checkpoint": diff["checkpoint"].name if diff["checkpoint"] else None,
        "classifier_checkpoint": clf["checkpoint"].name if clf["checkpoint"] else None,
        "ddim": args.ddim, "ddpm_steps": args.ddpm_steps, "samples_per_class": args.samples_per_class,
        "precision": args.precision,
    }


def sample_stage(args, state: State, scales: list[float], num_classes: int) -> None:
    sdir = args.out / "samples"
    sdir.mkdir(parents=True, exist_ok=True)
    meta = samples_meta(args)
    meta_path = sdir / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old != meta:
            stale = sorted(sdir.glob("s*_c*.npz"))
            log(f"stage samples: the models or settings changed ({old} -> {meta}); removing {len(stale)} stale sample files")
            for p in stale:
                p.unlink()
            # timings of the removed samples no longer describe what is in samples/
            st = state.stage("samples")
            st.setdefault("stale_invocations", []).extend(st["invocations"])
            st.update(invocations=[], wall_s=0.0, per_scale_wall_s={})
            state.save()
    write_json(meta_path, meta)
    timings = state.stage("samples").setdefault("per_scale_wall_s", {})
    for s in scales:
        jobs = []
        for c in range(num_classes):
            path = sdir / f"s{scale_tag(s)}_c{c}.npz"
            if path.is_file():
                continue
            cmd = adm("sample", args.out / "diffusion", "--out", path, "--num", args.samples_per_class,
                      "--batch-size", min(args.sample_batch, args.samples_per_class), *sampler_flags(args),
                      "--class", c, "--seed", 1000 * c, "--quiet")
            if s != 0:
                cmd += ["--classifier", args.out / "classifier", "--guidance", f"{s:g}"]
            if args.device:
                cmd += ["--device", args.device]
            if args.precision:
                cmd += ["--precision", args.precision]
            jobs.append((cmd, args.out / "logs" / "samples" / f"s{scale_tag(s)}_c{c}.log"))
        if not jobs:
            log(f"stage samples: scale {s:g}: all {num_classes} classes present, skipped")
            continue
        log(f"stage samples: scale {s:g}: {len(jobs)} classes x {args.samples_per_class} images, {sampler_label(args)}"
            f"{'' if s else ' (no classifier)'}, {args.parallel} at a time")
        t0 = time.monotonic()
        walls = run_parallel(jobs, args.parallel)
        wall = time.monotonic() - t0
        for (cmd, _), w in zip(jobs, walls):
            state.record("samples", cmd, w, scale=s)
        timings[scale_tag(s)] = round(timings.get(scale_tag(s), 0.0) + wall, 2)
        state.save()
        log(f"stage samples: scale {s:g} done in {wall:.1f}s ({wall / len(jobs):.1f}s per class)")


def load_samples(args, s: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for c in range(num_classes):
        with np.load(args.out / "samples" / f"s{scale_tag(s)}_c{c}.npz") as z:
            x, y = z["arr_0"], z["arr_1"] if "arr_1" in z.files else np.full(len(z["arr_0"]), c)
        if not np.all(y == c):
            raise PipelineError(f"s{scale_tag(s)}_c{c}.npz: labels {np.unique(y)} but class {c} was requested")
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


# ----------------------------------------------------------------------------- judging


def mean_pairwise_l2(images: np.ndarray) -> float | None:
    """Mean L2 distance over all pairs of images (uint8 NHWC), pixels in [0, 1]."""
    n = len(images)
    if n < 2:
        return None
    x = images.reshape(n, -1).astype(np.float64) / 255.0
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(n, 1)
    return float(np.sqrt(d2[iu]).mean())


def classify(model, images: np.ndarray, device, batch: int = 256) -> np.ndarray:
    """Softmax probabilities (N, classes) of the clean classifier at t = 0."""
    import torch

    from adm_cli.data.batches import to_model_input

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_model_input(images[i : i + batch]).to(device)
            logits = model(x, torch.zeros(x.shape[0], dtype=torch.long, device=device))
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def judge_device(args) -> str:
    import torch

    if args.device:
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def judge_stage(args, state: State, scales: list[float], num_classes: int) -> dict[str, Any]:
    from adm_cli.checkpoint import load_model
    from adm_cli.data.datasets import open_dataset

    path = args.out / "judge.json"
    clean = run_status(args.out / "clean")
    meta = {**samples_meta(args), "clean_checkpoint": clean["checkpoint"].name if clean["checkpoint"] else None,
            "scales": scales, "test_images": args.test_images}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("meta") == meta:
            log("stage judge: judge.json is up to date, skipped")
            return old
    t0 = time.monotonic()
    device = judge_device(args)
    loaded = load_model(args.out / "clean", expect="classifier")
    model = loaded.model.to(device).eval()
    log(f"stage judge: clean classifier {loaded.path.name} (step {loaded.step}, {loaded.num_parameters / 1e6:.2f}M parameters, EMA) on {device}")

    size = int(loaded.config.image_size)
    test = open_dataset(args.data, split="test", image_size=size, channels=int(loaded.config.in_channels))
    n = len(test) if args.test_images <= 0 else min(args.test_images, len(test))
    idx = np.sort(np.random.default_rng(0).permutation(len(test))[:n])
    timgs, tlabels = test.get(idx)
    tprobs = classify(model, timgs, device)
    tpred = tprobs.argmax(1)
    real_acc = float((tpred == tlabels).mean())
    real_per_class = [float((tpred[tlabels == c] == c).mean()) if np.any(tlabels == c) else None for c in range(num_classes)]
    # diversity of real images: up to 100 test images per class (the pair mean does not depend on the count)
    real_div = []
    for c in range(num_classes):
        sel = np.flatnonzero(tlabels == c)[:100]
        d = mean_pairwise_l2(timgs[sel])
        if d is not None:
            real_div.append(d)
    log(f"stage judge: real test split: accuracy {real_acc:.4f} on {n} images; real diversity {np.mean(real_div):.3f}")

    rows = []
    for s in scales:
        imgs, labels = load_samples(args, s, num_classes)
        probs = classify(model, imgs, device)
        pred = probs.argmax(1)
        per_class_acc, per_class_div = [], []
        for c in range(num_classes):
            sel = labels == c
            per_class_acc.append(float((pred[sel] == c).mean()))
            per_class_div.append(mean_pairwise_l2(imgs[sel]))
        divs = [d for d in per_class_div if d is not None]
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (labels, pred), 1)
        row = {
            "scale": s,
            "accuracy": float((pred == labels).mean()),
            "mean_p_requested": float(probs[np.arange(len(labels)), labels].mean()),
            "diversity": float(np.mean(divs)) if divs else None,
            "per_class_accuracy": per_class_acc,
            "per_class_diversity": per_class_div,
            "confusion": confusion.tolist(),  # rows: requested class, columns: judged class
            "predictions": pred.tolist(),
            "num_images": len(labels),
            "pixel_mean": float(imgs.mean() / 255.0),
        }
        rows.append(row)
        log(f"stage judge: s={s:g}: accuracy {row['accuracy']:.3f}, mean p(class) {row['mean_p_requested']:.3f}, "
            f"diversity {row['diversity'] if row['diversity'] is None else round(row['diversity'], 3)}")
    result = {
        "meta": meta,
        "judge": {"checkpoint": str(loaded.path), "step": loaded.step, "parameters": loaded.num_parameters, "weights": "ema", "t": 0},
        "real_test_accuracy": real_acc,
        "real_test_images": n,
        "real_per_class_accuracy": real_per_class,
        "real_diversity": float(np.mean(real_div)) if real_div else None,
        "samples_per_class": args.samples_per_class,
        "ddim": args.ddim,
        "sampler": sampler_label(args),
        "scales": rows,
    }
    write_json(path, result)
    wall = time.monotonic() - t0
    state.data["stages"].pop("judge", None)  # only the judging that produced judge.json counts
    state.record("judge", "python: clean classifier on the samples and the real test split", wall)
    return result


# ----------------------------------------------------------------------------- grids


def class_names(args, num_classes: int) -> list[str]:
    if num_classes == 10 and "fashion" in str(args.data).lower():
        return FASHION_CLASSES
    return [f"class {c}" for c in range(num_classes)]


def compose_grid(images: np.ndarray, labels: np.ndarray, pred: np.ndarray | None, names: list[str], *,
                 columns: int | None, title: str, zoom: int = 2) -> plot.Image.Image:
    """Rows = classes, columns = samples (first `columns`); red frame where the judge disagrees."""
    from PIL import Image, ImageDraw

    num_classes = len(names)
    per = [np.flatnonzero(labels == c) for c in range(num_classes)]
    k = max(len(p) for p in per)
    k = min(k, columns) if columns else k
    h, w = images.shape[1] * zoom, images.shape[2] * zoom
    pad, head = 6, 30
    label_w = 96 if any(names) else 0
    font, small = plot._font(14), plot._font(12)
    W = max(label_w + k * (w + pad) + pad, int(font.getlength(title)) + 2 * pad)
    H = head + num_classes * (h + pad) + pad
    img = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((pad, 7), title, fill=(0, 0, 0), font=font)
    for c in range(num_classes):
        y = head + pad + c * (h + pad)
        draw.text((pad, y + h / 2 - 8), names[c], fill=(40, 40, 40), font=small)
        for j, i in enumerate(per[c][:k]):
            x = label_w + pad + j * (w + pad)
            arr = images[i]
            tile = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB").resize((w, h), Image.NEAREST)
            img.paste(tile, (x, y))
            if pred is not None and pred[i] != c:
                draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=(220, 30, 30), width=2)
    return img


def grid_stage(args, scales: list[float], num_classes: int, judge: dict[str, Any] | None) -> list[Path]:
    from PIL import Image, ImageDraw

    gdir = args.out / "grids"
    gdir.mkdir(parents=True, exist_ok=True)
    names = class_names(args, num_classes)
    rows = {r["scale"]: r for r in (judge or {}).get("scales", [])}
    written, blocks = [], []
    for s in scales:
        imgs, labels = load_samples(args, s, num_classes)
        r = rows.get(s)
        pred = np.asarray(r["predictions"]) if r else None
        acc = f", judge accuracy {r['accuracy']:.2f}" if r else ""
        title = f"guidance scale s = {s:g}{' (no classifier)' if s == 0 else ''}, {sampler_label(args)}{acc}"
        grid = compose_grid(imgs, labels, pred, names, columns=None, title=title)
        path = gdir / f"s{scale_tag(s)}.png"
        grid.save(path)
        written.append(path)
        blocks.append(compose_grid(imgs, labels, pred, names if not blocks else [""] * num_classes, columns=min(args.samples_per_class, 6),
                                   title=f"s = {s:g}" + (f" (acc {r['accuracy']:.2f})" if r else "")))
    # all scales side by side: the same seeds (x_T) in every block, so columns are comparable
    if blocks:
        note = "Same x_T (seed 1000*class + i) in every block; red frame: the clean judge names another class."
        W = max(sum(b.width for b in blocks) + 10 * (len(blocks) - 1), int(plot._font(12).getlength(note)) + 12)
        H = max(b.height for b in blocks) + 24
        out = Image.new("RGB", (W, H), (255, 255, 255))
        x = 0
        for b in blocks:
            out.paste(b, (x, 0))
            x += b.width + 10
        ImageDraw.Draw(out).text((6, H - 20), note, fill=(90, 90, 90), font=plot._font(12))
        path = gdir / "compare.png"
        out.save(path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- summary


KEYS_DIFF = ["loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "grad_norm", "images_per_s"]
KEYS_CLF = ["loss", "acc@1", "acc@5", "val_loss", "val_acc@1", "val_acc@5", "val_acc@1_q0", "val_acc@1_q1", "val_acc@1_q2",
            "val_acc@1_q3", "images_per_s"]


def run_summary(run_dir: Path, keys: list[str]) -> dict[str, Any]:
    st = run_status(run_dir)
    recs = st["records"]
    desc = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}

    def pick(r):
        return {k: r[k] for k in keys if k in r}

    last_val = next((r for r in reversed(recs) if "val_acc@1" in r), None)
    return {
        "dir": str(run_dir),
        "command": desc.get("command"),
        "config": desc.get("config"),
        "step": st["step"],
        "images_seen": recs[-1].get("images") if recs else None,
        "training_s": st["elapsed_s"],
        "checkpoint": str(st["checkpoint"]) if st["checkpoint"] else None,
        "first": pick(recs[0]) if recs else None,
        "final": pick(recs[-1]) if recs else None,
        "final_val": pick(last_val) if last_val else None,
        "min_loss": min((r["loss"] for r in recs if "loss" in r), default=None),
    }


def device_info(args) -> dict[str, Any]:
    import torch

    info = {
        "requested": args.device, "precision": args.precision, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        from adm_cli import __version__

        info["adm"] = __version__
    except ImportError:
        pass
    return info


def fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def write_summary(args, state: State, scales: list[float], judge: dict[str, Any] | None, figures: list[Path], grids: list[Path],
                  started: float) -> None:
    runs = {
        "diffusion": run_summary(args.out / "diffusion", KEYS_DIFF),
        "classifier": run_summary(args.out / "classifier", KEYS_CLF),
        "clean": run_summary(args.out / "clean", KEYS_CLF),
    }
    order = {name: i for i, name in enumerate(STAGES)}
    stages = {k: {"wall_s": v["wall_s"], "commands": [i["command"] for i in v["invocations"]],
                  **({"per_scale_wall_s": v["per_scale_wall_s"]} if "per_scale_wall_s" in v else {})}
              for k, v in sorted(state.data["stages"].items(), key=lambda kv: order.get(kv[0], 99))}
    judge_light = None
    if judge:
        judge_light = {k: v for k, v in judge.items() if k != "scales"}
        judge_light["scales"] = [{k: v for k, v in r.items() if k != "predictions"} for r in judge["scales"]]
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "out": str(args.out),
        "data": str(args.data),
        "argv": sys.argv,
        "device": device_info(args),
        "this_invocation_wall_s": round(time.monotonic() - started, 1),
        "stages": stages,
        "runs": runs,
        "judge": judge_light,
        "figures": [str(p.relative_to(args.out)) for p in figures],
        "grids": [str(p.relative_to(args.out)) for p in grids],
    }
    write_json(args.out / "summary.json", summary)

    d, c, k = runs["diffusion"], runs["classifier"], runs["clean"]
    dev = summary["device"]
    lines = [
        "# Training evidence",
        "",
        (f"Data `{args.data}`; device {dev.get('gpu') or 'CPU'} (requested {args.device or 'default'}, precision {args.precision or 'default'}, "
         f"torch {dev['torch']}, {dev['torch_threads']} thread(s)); created {summary['created']}."),
        "",
        "## Training",
        "",
        "| run | steps | images seen | training min | stage wall min | first loss | final loss | final metrics |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def wall(name):
        return fmt(stages.get(name, {}).get("wall_s", 0.0) / 60, 3)

    if d["final"]:
        lines.append(f"| diffusion | {d['step']} | {fmt(d['images_seen'])} | {fmt(d['training_s'] / 60, 3)} | {wall('diffusion')} | "
                     f"{fmt(d['first'].get('loss'))} | {fmt(d['final'].get('loss'))} | mse {fmt(d['final'].get('mse'))}, vb {fmt(d['final'].get('vb'))}, "
                     f"loss q0..q3 {', '.join(fmt(d['final'].get(f'loss_q{q}'), 3) for q in range(4))} |")
    for name, r in (("classifier (noise-aware)", c), ("clean (judge)", k)):
        if r["final"]:
            v = r["final_val"] or {}
            qs = ", ".join(fmt(v.get(f"val_acc@1_q{q}"), 3) for q in range(4)) if "val_acc@1_q0" in v else ""
            lines.append(f"| {name} | {r['step']} | {fmt(r['images_seen'])} | {fmt(r['training_s'] / 60, 3)} | "
                         f"{wall('classifier' if 'noise' in name else 'clean')} | {fmt(r['first'].get('loss'))} | {fmt(r['final'].get('loss'))} | "
                         f"train acc@1 {fmt(r['final'].get('acc@1'), 3)}, val acc@1 {fmt(v.get('val_acc@1'), 3)}"
                         f"{f' (t quartiles {qs})' if qs else ''} |")
    if judge:
        lines += [
            "",
            "## Guidance sweep, judged by the clean classifier",
            "",
            (f"{judge['samples_per_class']} samples per class, {judge.get('sampler', 'DDIM ' + str(judge['ddim']))}, seeds 1000*class + i (the same x_T at every scale). "
             f"The judge's accuracy on {judge['real_test_images']} real test images: **{judge['real_test_accuracy']:.4f}**; "
             f"real-image diversity (mean pairwise L2 within a class, [0,1] pixels): {fmt(judge['real_diversity'], 4)}."),
            "",
            "| guidance scale s | judge accuracy | mean p(requested class) | diversity | sampling wall s |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        per_scale = stages.get("samples", {}).get("per_scale_wall_s", {})
        for r in judge["scales"]:
            lines.append(f"| {r['scale']:g}{' (no classifier)' if r['scale'] == 0 else ''} | {r['accuracy']:.3f} | "
                         f"{r['mean_p_requested']:.3f} | {fmt(r['diversity'], 4)} | {fmt(per_scale.get(scale_tag(r['scale'])), 4)} |")
    lines += ["", "## Wall time per stage", "", "| stage | wall s |", "| --- | ---: |"]
    for name, v in stages.items():
        lines.append(f"| {name} | {v['wall_s']:.1f} |")
    if figures or grids:
        lines += ["", "## Figures", ""]
        for p in figures + grids:
            rel = p.relative_to(args.out)
            lines.append(f"![{rel}]({rel})")
    lines += ["", "Commands and per-invocation wall times: `pipeline.json`; every number: `summary.json`.", ""]
    (args.out / "summary.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (everything goes there)")
    p.add_argument("--data", default=str((REPO / ".." / "shared" / "data" / "fashion-mnist").resolve()),
                   help="training data for adm (default: ../shared/data/fashion-mnist)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: adm's: CUDA if present)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="training and sampling precision (default: adm's)")
    g = p.add_argument_group("diffusion model")
    g.add_argument("--preset", default="small", help="adm train-diffusion --preset (default: small)")
    g.add_argument("--image-size", type=int, default=None, help="train at this size (default: the data's, 28 for Fashion-MNIST)")
    g.add_argument("--diffusion-minutes", type=float, default=None, help="total training time (default 5 when no --diffusion-steps)")
    g.add_argument("--diffusion-steps", type=int, default=None, help="total training steps")
    g.add_argument("--preview-every", type=int, default=1000, help="preview grid every N steps (and at the end)")
    g.add_argument("--extra", default="", help='extra train-diffusion flags, e.g. "--model-channels 64 --batch-size 128"')
    g = p.add_argument_group("classifiers")
    g.add_argument("--classifier-minutes", type=float, default=None, help="noise-aware classifier training time (default 1.5)")
    g.add_argument("--classifier-steps", type=int, default=None)
    g.add_argument("--classifier-channels", type=int, default=64, help="noise-aware classifier width")
    g.add_argument("--classifier-extra", default="", help="extra train-classifier flags for the noise-aware classifier")
    g.add_argument("--clean-minutes", type=float, default=None, help="clean judge training time (default 1)")
    g.add_argument("--clean-steps", type=int, default=None)
    g.add_argument("--clean-channels", type=int, default=64, help="clean judge width")
    g.add_argument("--clean-extra", default="", help="extra train-classifier flags for the clean judge")
    g.add_argument("--val-fraction", type=float, default=0.05, help="held-out share of the training data for val accuracy")
    g.add_argument("--eval-every", type=int, default=None, help="classifier validation every N steps (default: every log line)")
    g.add_argument("--log-every", type=int, default=50, help="metrics line every N steps (all training runs)")
    g = p.add_argument_group("sampling and judging")
    g.add_argument("--samples-per-class", type=int, default=10)
    g.add_argument("--ddim", type=int, default=50, help="DDIM steps")
    g.add_argument("--ddpm-steps", type=int, default=None, help="sample with DDPM over this many respaced steps instead of DDIM")
    g.add_argument("--scales", default="0,1,4,10", help="classifier guidance scales (0 = no classifier)")
    g.add_argument("--sample-batch", type=int, default=100, help="images per forward pass when sampling")
    g.add_argument("--parallel", type=int, default=None, help="sample processes at a time (default: 4 on CUDA, 1 on CPU)")
    g.add_argument("--test-images", type=int, default=10000, help="real test images for the judge's accuracy (0 = all)")
    p.add_argument("--skip-train", action="store_true", help="only redo sampling / judging / report (the runs must exist)")
    p.add_argument("--stop-after", choices=STAGES, default=None, help="stop after this stage")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    if args.diffusion_minutes is None and args.diffusion_steps is None:
        args.diffusion_minutes = 5.0
    if args.classifier_minutes is None and args.classifier_steps is None:
        args.classifier_minutes = 1.5
    if args.clean_minutes is None and args.clean_steps is None:
        args.clean_minutes = 1.0
    try:
        args.scales_list = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        p.error(f"--scales takes comma-separated numbers, got {args.scales!r}")
    if not args.scales_list or any(s < 0 for s in args.scales_list):
        p.error("--scales needs non-negative numbers")
    if args.samples_per_class < 1 or args.ddim < 1:
        p.error("--samples-per-class and --ddim must be positive")
    if args.parallel is None:
        args.parallel = 4 if _cuda(args) else 1
    return args


def _cuda(args) -> bool:
    if args.device:
        return args.device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    state = State(args.out)
    state.data.setdefault("argv", []).append(sys.argv)
    state.save()
    log(f"output {args.out}; data {args.data}; python {sys.executable}")
    dflags = device_flags(args)
    diff_dir, clf_dir, clean_dir = args.out / "diffusion", args.out / "classifier", args.out / "clean"

    # 1. diffusion model
    new = adm("train-diffusion", args.data, "--out", diff_dir, "--preset", args.preset, "--class-cond", "--learn-sigma", "--loss", "hybrid",
              *(["--image-size", args.image_size] if args.image_size else []), *shlex.split(args.extra))
    opts = ["--log-every", str(args.log_every), "--preview-every", str(args.preview_every), *dflags]
    train_stage("diffusion", diff_dir, new, opts, steps=args.diffusion_steps, minutes=args.diffusion_minutes, args=args, state=state)
    if args.stop_after == "diffusion":
        return 0
    num_classes = num_classes_of(diff_dir)
    size = image_size_of(diff_dir)

    # 2. noise-aware classifier, 3. clean judge
    # On --resume adm keeps the run's stored settings (the hold-out fraction included) and refuses
    # flags that would change them, so train_stage drops --val-fraction / --precision there.
    copts = ["--log-every", str(args.log_every), "--val-fraction", f"{args.val_fraction:g}",
             *(["--eval-every", str(args.eval_every)] if args.eval_every else []), *dflags]
    new = adm("train-classifier", args.data, "--out", clf_dir, "--diffusion", diff_dir, "--model-channels", args.classifier_channels,
              *shlex.split(args.classifier_extra))
    train_stage("classifier", clf_dir, new, copts, steps=args.classifier_steps, minutes=args.classifier_minutes, args=args, state=state)
    if args.stop_after == "classifier":
        return 0
    new = adm("train-classifier", args.data, "--out", clean_dir, "--clean", "--image-size", size, "--model-channels", args.clean_channels,
              *shlex.split(args.clean_extra))
    train_stage("clean", clean_dir, new, copts, steps=args.clean_steps, minutes=args.clean_minutes, args=args, state=state)
    if args.stop_after == "clean":
        return 0

    # 4. samples
    sample_stage(args, state, args.scales_list, num_classes)
    if args.stop_after == "samples":
        return 0

    # 5. judge
    judge = judge_stage(args, state, args.scales_list, num_classes)
    if args.stop_after == "judge":
        return 0

    # 6. report
    t0 = time.monotonic()
    grids = grid_stage(args, args.scales_list, num_classes, judge)
    figures = plot.make_figures(args.out)
    state.data["stages"]["report"] = {"invocations": [], "wall_s": round(time.monotonic() - t0, 2)}
    state.save()
    write_summary(args, state, args.scales_list, judge, figures, grids, started)
    log(f"wrote {args.out / 'summary.md'}, {args.out / 'summary.json'}, {len(figures)} figures, {len(grids)} grids "
        f"({time.monotonic() - started:.0f}s this invocation)")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PipelineError as e:
        print(f"\n[evidence] FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
