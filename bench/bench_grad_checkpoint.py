#!/usr/bin/env python
"""Peak memory of one training step with and without gradient checkpointing (`--grad-checkpoint`).

The published ImageNet-64 layout (296M parameters, `DIFFUSION_PRESETS["imagenet64"]`), random
weights, batch 2, one forward + backward of the simple loss (ε MSE) in float32 on the CPU (or
`--device cuda`). Each mode runs in its own fresh process, so that its peak is its own: on the
CPU the peak resident set size (ru_maxrss) minus the RSS just before the step (model and
gradient buffers already allocated), on CUDA `torch.cuda.max_memory_allocated` minus the memory
allocated before the step. Also reports the step's seconds and checks that the gradients are the
same in both modes (a digest of their sum of squares).

    python bench/bench_grad_checkpoint.py --threads 2 --out bench/results/grad_checkpoint_cpu_imagenet64.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from adm_cli.config import DIFFUSION_PRESETS
    from adm_cli.nn import build_unet
    from adm_cli.nn.layers import set_grad_checkpointing

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_unet(DIFFUSION_PRESETS["imagenet64"].unet).to(device).train()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # gradient buffers allocated before the measurement
    set_grad_checkpointing(model, args.mode == "checkpoint")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 64, 64, generator=g).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    eps = torch.randn(args.batch, 3, 64, 64, generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mib()
    start = time.perf_counter()
    out = model(x, t, y)
    loss = ((out[:, :3] - eps) ** 2).mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - start
    grad_sq = float(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
    return {"mode": args.mode, "before_mib": round(before, 1), "peak_mib": round(peak, 1),
            "step_peak_above_before_mib": round(peak - before, 1), "seconds": round(seconds, 2),
            "loss": float(loss), "grad_sum_sq": grad_sq}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--mode", choices=("plain", "checkpoint"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    rows = []
    for mode in ("plain", "checkpoint"):
        cmd = [sys.executable, __file__, "--mode", mode, "--threads", str(args.threads), "--device", args.device, "--batch", str(args.batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    plain, ckpt = rows
    result = {
        "bench": "grad-checkpoint", "config": "imagenet64 (296M), batch %d, fp32, %s, %d threads" % (args.batch, args.device, args.threads),
        "rows": rows,
        "step_memory_ratio": round(ckpt["step_peak_above_before_mib"] / plain["step_peak_above_before_mib"], 3),
        "time_ratio": round(ckpt["seconds"] / plain["seconds"], 3),
        "same_loss": plain["loss"] == ckpt["loss"],
        "grad_sum_sq_rel_diff": abs(plain["grad_sum_sq"] - ckpt["grad_sum_sq"]) / plain["grad_sum_sq"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
