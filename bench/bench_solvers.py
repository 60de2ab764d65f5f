"""Per-evaluation overhead of the samplers: everything but the network, against the network itself.

    python bench/bench_solvers.py --config imagenet64 --batch 4 --nfe 10 --threads 2 \
        --out bench/results/solver_overhead_cpu_imagenet64.json

For each sampler, in one run and on the same batch:
  network   one forward of the real network (random weights under the published ImageNet-64
            layout, 296M parameters), in the chosen precision: the median of --reps forwards;
  overhead  the whole sampler loop with the network replaced by a cached output of the right
            shape (so the denoiser's arithmetic — x̂_0, ε̂, clipping, p(x_{t-1}|x_t) — and the
            solver's steps are all that runs), per network evaluation, median of --reps loops.
The ratio overhead / network is the share of sampling time that is not the network. The issue's
goal: under 2 % for every solver, side by side with DDIM. Guidance is off (its classifier or
second pass is network time, not solver arithmetic).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adm_cli.backend import make_backend  # noqa: E402
from adm_cli.config import DIFFUSION_PRESETS  # noqa: E402
from adm_cli.diffusion import Denoiser  # noqa: E402
from adm_cli.generate import SampleOptions, default_spacing, run_sampler, sampling_schedule, steps_for_nfe  # noqa: E402
from adm_cli.checkpoint import Loaded  # noqa: E402
from adm_cli.nn import build_unet  # noqa: E402

SAMPLERS = ("ddim", "dpm++2m", "dpm++3m", "unipc", "heun", "ddpm")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="imagenet64", choices=sorted(DIFFUSION_PRESETS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = DIFFUSION_PRESETS[args.config]
    unet = spec.unet
    backend = make_backend(args.device, args.precision)
    net = backend.prepare(build_unet(unet).eval())
    model = Loaded("diffusion", net, unet, spec.diffusion, None, "bench", args.config, Path("bench.pt"))
    n_params = sum(t.numel() for t in net.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, unet.in_channels, unet.image_size, unet.image_size, generator=g).to(backend.device)
    y = torch.randint(unet.num_classes or 1, (args.batch,), generator=g).to(backend.device) if unet.num_classes else None
    t = torch.full((args.batch,), 500, device=backend.device)

    def forward() -> torch.Tensor:
        with torch.no_grad(), backend.autocast():
            return net(x, t, y=y).float()

    cached = forward()  # warm-up and the stand-in output
    net_times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        forward()
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        net_times.append(time.perf_counter() - start)
    network_s = statistics.median(net_times)

    rows = {}
    for sampler in SAMPLERS:
        steps = steps_for_nfe(sampler, args.nfe)
        spacing = default_spacing(sampler, guided=False)
        options = SampleOptions(num=args.batch, sampler=sampler, respacing=str(steps), spacing=spacing)
        schedule = sampling_schedule(model, options).to(backend.device)
        calls = {"n": 0}

        def free_network(xt: torch.Tensor, model_t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            calls["n"] += 1
            return cached

        denoise = Denoiser(free_network, schedule=schedule, config=spec.diffusion, labels=y)
        gens = [torch.Generator().manual_seed(i) for i in range(args.batch)]
        loop_times = []
        for _ in range(args.reps):
            calls["n"] = 0
            start = time.perf_counter()
            run_sampler(sampler, denoise, x, generators=gens)
            if backend.device.type == "cuda":
                torch.cuda.synchronize()
            loop_times.append(time.perf_counter() - start)
        per_eval = statistics.median(loop_times) / calls["n"]
        rows[sampler] = {
            "steps": steps, "spacing": spacing, "nfe": calls["n"], "overhead_s_per_eval": per_eval,
            "share_of_network": per_eval / network_s,
        }
        print(f"{sampler:8s} nfe {calls['n']:3d}  overhead {per_eval * 1e3:8.3f} ms/eval  "
              f"= {100 * per_eval / network_s:6.3f} % of one forward ({network_s * 1e3:.0f} ms)", flush=True)

    result = {
        "config": args.config, "parameters": n_params, "batch": args.batch, "precision": args.precision,
        "device": str(backend.device), "threads": args.threads, "nfe": args.nfe, "reps": args.reps,
        "network_s_per_forward": network_s, "samplers": rows,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
