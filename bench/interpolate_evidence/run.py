"""Evidence for `adm interpolate` and `adm upsample` on Fashion-MNIST (28x28 grayscale, 10 classes).

Inputs (trained with `adm train-diffusion` / `adm train-classifier`, see README.md):
  --base  a class-conditional 28x28 diffusion model
  --sr    a 14->28 super-resolution model (`--low-res-size 14`)
  --classifier  a noise-aware classifier (used for `--classifier` and as a rough judge)
  --data  the Fashion-MNIST IDX folder (its t10k test split is used; the models never saw it)

Outputs in --out:
  strip_steps.png         one pair of test images interpolated with 25 / 50 / 100 DDIM steps
                          (rows), from `adm interpolate` itself (A, 9 frames, B), 4x nearest
  strip_noise.png         the same pair, `--mode noise --t 500` (DDPM Fig. 8)
  upsample_grid.png       rows: 14x14 base (nearest), bilinear 28x28, `adm upsample`, original
  summary.json            reconstruction PSNR per step count over --pairs test pairs (one class per
                          pair), upsampling PSNR / judge accuracy, commands and wall times
Each `adm` step runs as a subprocess of `python -m adm_cli` (the CLI users run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.data.datasets import open_dataset
from adm_cli.data.images import make_grid
from adm_cli.generate.interpolate import InterpolateOptions, interpolate, psnr

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def adm(*args: str, log: list) -> str:
    cmd = [sys.executable, "-m", "adm_cli", *map(str, args)]
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    log.append({"command": " ".join(["adm", *map(str, args)]), "seconds": round(time.time() - t0, 1)})
    return done.stdout


def save_scaled(grid: np.ndarray, path: Path, scale: int = 4) -> None:
    """A uint8 image (H, W) or (H, W, C) enlarged `scale` times with nearest neighbours."""
    img = Image.fromarray(grid[..., 0] if grid.ndim == 3 and grid.shape[-1] == 1 else grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def stack_rows(paths: list[Path], out: Path, scale: int = 4) -> None:
    save_scaled(np.concatenate([np.asarray(Image.open(p)) for p in paths], axis=0), out, scale)


def area_down(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC -> area-downsampled uint8 (what super-resolution training conditions on)."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    low = F.interpolate(x, size=size, mode="area")
    return ((low + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def bilinear_up(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def judge(classifier, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        logits = torch.cat([classifier.model(x[i : i + 256], torch.zeros(len(x[i : i + 256]), dtype=torch.long))
                            for i in range(0, len(x), 256)])
    return logits.argmax(-1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--sr", type=Path, required=True)
    p.add_argument("--classifier", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("../shared/data/fashion-mnist"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pairs", type=int, default=10, help="test pairs for the PSNR table (one per class, cycling)")
    p.add_argument("--steps", default="25,50,100")
    p.add_argument("--upsample", type=int, default=256, help="test images to upsample")
    p.add_argument("--upsample-steps", default="--ddim 25")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log: list = []
    steps = [int(s) for s in args.steps.split(",")]

    test = open_dataset(args.data, split="test")
    images, labels = test.get(np.arange(len(test)))  # (10000, 28, 28, 1) uint8, (10000,) int64
    npz = out / "test.npz"
    np.savez(npz, arr_0=images, arr_1=labels)  # FILE:INDEX inputs for adm interpolate
    by_class = {c: np.flatnonzero(labels == c) for c in range(10)}

    # 1. the strip: two ankle boots, through the CLI, at every step count
    a, b = int(by_class[9][0]), int(by_class[9][3])
    rows = []
    cli_psnr = {}
    for k in steps:
        folder = out / f"cli_{k}"
        text = adm("interpolate", args.base, f"{npz}:{a}", f"{npz}:{b}", "--out", folder, "--steps", k,
                   "--frames", 9, "--classifier", args.classifier, "--overwrite", "--quiet", "--device", args.device, "--precision", "fp32", log=log)
        cli_psnr[k] = json.loads((folder / "summary.json").read_text())["psnr_db"]
        rows.append(folder / "strip.png")
        print(text.strip().splitlines()[0], flush=True)
    stack_rows(rows, out / "strip_steps.png")
    folder = out / "cli_noise"
    adm("interpolate", args.base, f"{npz}:{a}", f"{npz}:{b}", "--out", folder, "--mode", "noise", "--t", 500,
        "--steps", 100, "--frames", 9, "--class", 9, "--overwrite", "--quiet", "--device", args.device, "--precision", "fp32", log=log)
    stack_rows([folder / "strip.png"], out / "strip_noise.png")

    # 2. reconstruction PSNR over test pairs (true class given), per step count, x̂_0 clipped (default) or not
    model = load_model(args.base)
    backend = make_backend(args.device, "fp32")
    table: dict[str, dict] = {}
    for clip in (True, False):
        for k in steps:
            scores = []
            t0 = time.time()
            for i in range(args.pairs):
                c = i % 10
                ia, ib = by_class[c][1 + 2 * (i // 10)], by_class[c][2 + 2 * (i // 10)]
                res = interpolate(model, images[[ia, ib]], InterpolateOptions(steps=k, frames=2, class_label=c, clip_denoised=clip),
                                  backend=backend)
                scores += list(res.psnr)
            key = f"{k}{'' if clip else '_noclip'}"
            table[key] = {"mean_db": float(np.mean(scores)), "median_db": float(np.median(scores)),
                          "min_db": float(np.min(scores)), "max_db": float(np.max(scores)), "n": len(scores),
                          "seconds": round(time.time() - t0, 1)}
            print(key, table[key], flush=True)

    # 3. upsampling 14 -> 28 of test images, through the CLI
    n = args.upsample
    base = out / "base14.npz"
    np.savez(base, arr_0=area_down(images[:n], 14), arr_1=labels[:n])
    up = out / "upsampled.npz"
    adm("upsample", args.sr, "--base", base, "--out", up, *args.upsample_steps.split(), "-b", 64, "--overwrite", "--quiet",
        "--device", args.device, "--precision", "fp32", log=log)
    with np.load(up) as d:
        sr_images, sr_labels = d["arr_0"], d["arr_1"]
    low = np.load(base)["arr_0"]
    bil = bilinear_up(low, 28)
    nearest = low.repeat(2, axis=1).repeat(2, axis=2)
    show = 16
    grid = make_grid(np.concatenate([nearest[:show], bil[:show], sr_images[:show], images[:show]]), nrow=show)
    save_scaled(grid, out / "upsample_grid.png", scale=3)
    clf = load_model(args.classifier)
    acc = {name: float((judge(clf, x) == labels[:n]).mean()) for name, x in
           (("original", images[:n]), ("bilinear", bil), ("upsampled", sr_images))}
    upsample = {
        "images": n,
        "labels_kept": bool(np.array_equal(sr_labels, labels[:n])),
        "psnr_db_vs_original": {"bilinear": float(np.mean([psnr(x, y) for x, y in zip(bil, images[:n])])),
                                "nearest": float(np.mean([psnr(x, y) for x, y in zip(nearest, images[:n])])),
                                "upsampled": float(np.mean([psnr(x, y) for x, y in zip(sr_images, images[:n])]))},
        "judge_accuracy": acc,
        "sampler": args.upsample_steps,
    }
    print(upsample, flush=True)
    npz.unlink()
    summary = {"strip_pair": [a, b], "strip_classes": CLASSES[9], "cli_psnr_db": cli_psnr, "reconstruction": table,
               "upsample": upsample, "commands": log, "torch": torch.__version__}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
