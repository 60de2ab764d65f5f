#!/usr/bin/env python
"""Sampling speed of adm against the reference guided-diffusion, in one run.

One network configuration is built with the reference code (imported from --reference, never
copied into this repository), filled with deterministic non-zero weights
(tests/golden_weights.deterministic_state_dict), saved as a bare guided-diffusion state dict and
loaded back in adm with `adm_cli.checkpoint.load_model`. Both implementations then sample the
same batch (same x_T, same labels, same respacing) in interleaved repetitions:

    ref                 guided-diffusion: create_gaussian_diffusion + ddim_sample_loop /
                        p_sample_loop with its UNetModel in float32, as its scripts run on a CPU
                        (--ref-fp16: its float16 mode, as its scripts run on a GPU)
    fp32                adm_cli.generate.sample_batch, reference-exact mode
    bf16                ... under bf16 autocast
    *-cl                ... with channels_last weights and activations
    *-compile           ... with the network torch.compile'd (compile time reported separately)

Every mode runs once untimed first (warm-up: oneDNN primitive caches, torch.compile); its output
is the one compared with the reference. Then `--reps` rounds run every mode once each, in turn,
so that machine noise hits all modes alike. Reported: median seconds per batch, images/s, the
ratio to the reference, and max / mean |adm - ref| of the final samples (DDIM η = 0 only: the
DDPM samplers draw their noise from different streams, so their samples are not comparable).

    python bench/bench_sample.py --reference /path/to/guided-diffusion
    python bench/bench_sample.py --reference ... --guidance 1.0          # classifier guidance
    python bench/bench_sample.py --reference ... --config imagenet64 --device cuda --batch 64 --ref-fp16 \
        --modes ref,fp32,bf16,bf16-cl,fp16-cl,bf16-cl-compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from adm_cli.backend import image_generators, make_backend  # noqa: E402
from adm_cli.checkpoint import load_model  # noqa: E402
from adm_cli.diffusion import make_schedule  # noqa: E402
from adm_cli.generate import SampleOptions, initial_state, sample_batch  # noqa: E402
from tests.golden_weights import deterministic_state_dict  # noqa: E402

# Reference constructor arguments (attention_resolutions are downsampling factors, as the
# reference UNetModel takes them), the schedule, and what adm needs to be told about a
# structure that is not one of the published models.
CONFIGS = {
    "small32": dict(
        unet=dict(
            image_size=32, in_channels=3, model_channels=64, out_channels=6, num_res_blocks=2,
            attention_resolutions=(2, 4), dropout=0.0, channel_mult=(1, 2, 2), num_classes=10,
            num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True,
            use_new_attention_order=False,
        ),
        classifier=dict(
            image_size=32, in_channels=3, model_channels=64, out_channels=10, num_res_blocks=2,
            attention_resolutions=(2, 4), channel_mult=(1, 2, 2), num_head_channels=64,
            use_scale_shift_norm=True, resblock_updown=True, pool="attention",
        ),
        schedule="linear",
        overrides=dict(image_size=32, num_head_channels=32, schedule="linear"),
    ),
    # The published ImageNet 64x64 model and classifier (guided-diffusion README flags).
    "imagenet64": dict(
        unet=dict(
            image_size=64, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=3,
            attention_resolutions=(2, 4, 8), dropout=0.1, channel_mult=(1, 2, 3, 4), num_classes=1000,
            num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
            use_new_attention_order=True,
        ),
        classifier=dict(
            image_size=64, in_channels=3, model_channels=128, out_channels=1000, num_res_blocks=4,
            attention_resolutions=(2, 4, 8), channel_mult=(1, 2, 3, 4), num_head_channels=64,
            use_scale_shift_norm=True, resblock_updown=True, pool="attention",
        ),
        schedule="cosine",
        overrides={},  # matches the table of published models
    ),
    # The published 64->256 upsampler (guided-diffusion README flags); `adm upsample`'s network.
    "upsample64-256": dict(
        unet=dict(
            image_size=256, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=2,
            attention_resolutions=(8, 16, 32), dropout=0.0, channel_mult=(1, 1, 2, 2, 4, 4), num_classes=1000,
            num_heads=4, num_head_channels=-1, use_scale_shift_norm=True, resblock_updown=True,
            use_new_attention_order=False,
        ),
        low_res_size=64,
        schedule="linear",
        overrides={},
    ),
}

DEFAULT_MODES = "ref,fp32,fp32-cl,bf16,bf16-cl"  # add e.g. bf16-compile (slow to compile on a CPU)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="path of a guided-diffusion checkout (openai/guided-diffusion)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--respacing", default="ddim25", help="'ddim25' (DDIM, eta=0) or e.g. '50' (DDPM)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier guidance scale (0: none)")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated; default {DEFAULT_MODES}")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (each runs every mode once)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--ref-fp16", action="store_true",
        help="run the reference networks in float16 (its --use_fp16 True; the published GPU setting)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def import_reference(path: str):
    sys.path.insert(0, str(Path(path).resolve()))
    from guided_diffusion.script_util import create_gaussian_diffusion
    from guided_diffusion.unet import EncoderUNetModel, SuperResModel, UNetModel

    return create_gaussian_diffusion, UNetModel, EncoderUNetModel, SuperResModel


def deterministic(module: torch.nn.Module) -> torch.nn.Module:
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(deterministic_state_dict(shapes))
    return module.eval()


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Mode:
    """One way of sampling; `run()` returns the final samples (float32, CPU)."""

    def __init__(self, name: str):
        self.name = name
        self.first_s: float | None = None
        self.times: list[float] = []
        self.out: torch.Tensor | None = None


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    create_gaussian_diffusion, UNetModel, EncoderUNetModel, SuperResModel = import_reference(args.reference)
    low_size = cfg.get("low_res_size")  # a super-resolution configuration: conditioned on low_res
    sampler = "ddim" if args.respacing.startswith("ddim") else "ddpm"
    guided = args.guidance != 0
    B, size = args.batch, cfg["unet"]["image_size"]

    # ---- the network, built by the reference, saved as a bare state dict
    tmp = tempfile.TemporaryDirectory(prefix="adm-bench-")
    net_class = SuperResModel if low_size else UNetModel
    ref_model = deterministic(net_class(**cfg["unet"], use_fp16=args.ref_fp16)).to(device)
    model_path = Path(tmp.name) / "model.pt"
    torch.save(ref_model.state_dict(), model_path)
    if args.ref_fp16:
        ref_model.convert_to_fp16()  # as its scripts do with --use_fp16 True
    ref_clf = clf_path = None
    if guided:
        ref_clf = deterministic(EncoderUNetModel(**cfg["classifier"], use_fp16=args.ref_fp16)).to(device)
        clf_path = Path(tmp.name) / "classifier.pt"
        torch.save(ref_clf.state_dict(), clf_path)
        if args.ref_fp16:
            ref_clf.convert_to_fp16()
    diffusion = create_gaussian_diffusion(
        steps=1000, learn_sigma=True, noise_schedule=cfg["schedule"], timestep_respacing=args.respacing
    )
    n_params = sum(p.numel() for p in ref_model.parameters())

    # ---- the batch: adm's per-image seeding gives x_T and labels; the reference gets the same
    num_classes = cfg["unet"]["num_classes"]
    x_T, labels, _ = initial_state(range(B), shape=(3, size, size), num_classes=num_classes, class_label=None, seed=args.seed)
    low_res = None
    if low_size:  # base images as adm upsample feeds them: uint8 -> x / 127.5 - 1
        g = torch.Generator().manual_seed(args.seed)
        low_res = torch.randint(0, 256, (B, 3, low_size, low_size), generator=g).float() / 127.5 - 1
    extra = {"low_res": low_res} if low_res is not None else {}
    options = SampleOptions(
        num=B, sampler=sampler, respacing=args.respacing, eta=0.0, guidance_scale=args.guidance,
        seed=args.seed, batch_size=B,
    )

    def ref_run() -> torch.Tensor:
        # As guided-diffusion's scripts/classifier_sample.py (and image_sample.py without cond_fn).
        torch.manual_seed(args.seed)
        y = labels.to(device)

        def model_fn(x, t, y=None, **kwargs):
            return ref_model(x, t, y=y, **kwargs)

        cond_fn = None
        if guided:

            def cond_fn(x, t, y=None):
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    logits = ref_clf(x_in, t)
                    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
                    selected = log_probs[range(len(logits)), y.view(-1)]
                    return torch.autograd.grad(selected.sum(), x_in)[0] * args.guidance

        loop = diffusion.ddim_sample_loop if sampler == "ddim" else diffusion.p_sample_loop
        out = loop(
            model_fn, (B, 3, size, size), noise=x_T.to(device), clip_denoised=True,
            model_kwargs={"y": y, **{k: v.to(device) for k, v in extra.items()}}, cond_fn=cond_fn, device=device,
        )
        return out.float().cpu()

    def adm_runner(name: str):
        flags = set(name.split("-"))
        unknown = flags - {"fp32", "bf16", "fp16", "cl", "nocl", "w", "compile"}
        if unknown:
            raise SystemExit(f"unknown mode {name!r} (flags: fp32|bf16|fp16, cl|nocl, w, compile)")
        precision = "bf16" if "bf16" in flags else "fp16" if "fp16" in flags else "fp32"
        backend = make_backend(args.device, precision, channels_last="cl" in flags, compile="compile" in flags,
                               cast_weights="w" in flags)
        model = load_model(model_path, overrides=cfg["overrides"], expect="super-res" if low_size else "diffusion")
        schedule = make_schedule(model.diffusion, args.respacing).to(backend.device)
        model.model = backend.prepare(model.model)
        clf = None
        if guided:
            clf = load_model(clf_path, expect="classifier")
            clf.model = backend.prepare(clf.model)
        # With backend.compile, Backend.prepare has already wrapped both networks in torch.compile.

        def run() -> torch.Tensor:
            gens = image_generators([args.seed + i for i in range(B)])
            return sample_batch(
                model, x_T, schedule=schedule, options=options, backend=backend, generators=gens,
                labels=labels, classifier=clf, model_kwargs=extra or None,
            )

        return run

    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes: list[tuple[Mode, Callable[[], torch.Tensor]]] = []
    for name in names:
        modes.append((Mode(name), ref_run if name == "ref" else adm_runner(name)))

    print(
        f"# {args.config}: {n_params / 1e6:.2f}M parameters, {size}x{size}, batch {B}, {sampler} "
        f"respacing {args.respacing!r}, guidance {args.guidance}, device {device}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, adm_cli from {Path(sys.modules['adm_cli'].__file__).parent}",
        flush=True,
    )
    load_before = _loadavg()
    # ---- warm-up (untimed for the table; the first call includes torch.compile)
    for mode, run in modes:
        sync(device)
        t0 = time.perf_counter()
        mode.out = run()
        sync(device)
        mode.first_s = time.perf_counter() - t0
        print(f"  warm-up {mode.name:<18} {mode.first_s:8.2f} s", flush=True)
    # ---- interleaved timed rounds
    for r in range(args.reps):
        for mode, run in modes:
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            mode.times.append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{args.reps}: " + ", ".join(f"{m.name} {m.times[-1]:.2f}s" for m, _ in modes), flush=True)

    # ---- results
    by_name = {m.name: m for m, _ in modes}
    ref = by_name.get("ref")
    ref_med = (statistics.median(ref.times) if ref.times else ref.first_s) if ref else None
    rows = []
    ref_best = (min(ref.times) if ref.times else ref.first_s) if ref else None
    for mode, _ in modes:
        med = statistics.median(mode.times) if mode.times else mode.first_s
        best = min(mode.times) if mode.times else mode.first_s
        row = dict(
            mode=mode.name,
            median_s=med,
            best_s=best,
            img_per_s=B / med,
            img_per_s_best=B / best,
            ratio=(ref_med / med) if ref_med else None,
            ratio_best=(ref_best / best) if ref_best else None,
            warmup_s=mode.first_s,
            compile_s=(mode.first_s - med) if "compile" in mode.name else None,
        )
        if ref is not None and mode is not ref and sampler == "ddim":
            d = (mode.out - ref.out).abs()
            row.update(
                max_abs_diff=float(d.max()),
                mean_abs_diff=float(d.mean()),
                p999_abs_diff=float(torch.quantile(d.flatten()[:1 << 24], 0.999)),
            )
        rows.append(row)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    print()
    print(f"load average {load_before} -> {_loadavg()}")
    print(
        f"| mode | s/batch median (best) of {args.reps} | img/s median (best) | × ref median (best) "
        "| warm-up s | max abs diff | 99.9% abs diff | mean abs diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['median_s']:.2f} ({row['best_s']:.2f}) | {row['img_per_s']:.2f} ({row['img_per_s_best']:.2f}) "
            f"| {fmt(row['ratio'], '.2f')} ({fmt(row['ratio_best'], '.2f')}) | {row['warmup_s']:.1f} "
            f"| {fmt(row.get('max_abs_diff'), '.2e')} | {fmt(row.get('p999_abs_diff'), '.2e')} | {fmt(row.get('mean_abs_diff'), '.2e')} |"
        )
    if sampler != "ddim":
        print("(DDPM: the two implementations draw step noise from different streams; samples are not compared)")
    result = dict(
        config=args.config, params=n_params, batch=B, respacing=args.respacing, sampler=sampler,
        guidance=args.guidance, device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
        cpu=platform.processor() or platform.machine(), reps=args.reps, adm_cli=str(Path(sys.modules['adm_cli'].__file__).parent),
        rows=rows,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
