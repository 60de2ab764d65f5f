"""`adm interpolate`: DDIM inversion of two real images, slerp between their latents, decoding."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import check_writable, user_errors
from adm_cli.generate.interpolate import (
    InterpolateOptions,
    check_interpolation,
    check_output_dir,
    interpolate as run_interpolation,
    load_endpoint,
    write_interpolation,
)
from adm_cli.reporting import Reporter, stdout_line

EXAMPLE = """
Examples:

  adm interpolate runs/faces a.png b.jpg --out interp/ --steps 100 --frames 9

  adm interpolate 64x64_diffusion.pt real.npz:3 real.npz:17 --out interp/ --class 207
  adm interpolate 256x256_diffusion.pt a.png b.png --classifier 256x256_classifier.pt --out interp/

  adm interpolate runs/fmnist a.png b.png --mode noise --t 500 --out interp_noise/   # DDPM Fig. 8

Writes DIR/frames.npz (arr_0 frames, alpha, latents), DIR/strip.png (A, frames, B),
DIR/reconstructions.png (inputs over reconstructions) and DIR/summary.json; prints the
reconstruction PSNR of both inputs.
"""


class ModeChoice(str, Enum):
    ddim = "ddim"
    noise = "noise"


@user_errors
def interpolate(
    ctx: typer.Context,
    checkpoint: o.Checkpoint,
    a: Annotated[str, typer.Argument(help="first image: PNG/JPEG file, or FILE.npz:INDEX (also .h5, .npy)", show_default=False)],
    b: Annotated[str, typer.Argument(help="second image, as A", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder", show_default=False)],
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps for inversion and decoding (noise mode: respaced steps over the whole process)", callback=o.positive)] = 100,
    frames: Annotated[int, typer.Option("--frames", help="points on the path, both reconstructions included", callback=o.count)] = 9,
    mode: Annotated[ModeChoice, typer.Option("--mode", help="ddim: invert to x_T and slerp; noise: mix x_t ~ q(x_t|x_0) at --t (DDPM)")] = ModeChoice.ddim,
    t: Annotated[int, typer.Option("--t", help="noise mode: diffuse to this step of the trained process", callback=o.non_negative_int)] = 500,
    class_label: Annotated[Optional[int], typer.Option("--class", help="class for a class-conditional model (default: predicted by --classifier)", callback=o.non_negative_int)] = None,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="noise-aware classifier that predicts the class of A and B")] = None,
    seed: Annotated[int, typer.Option("--seed", help="noise mode: seed of the fixed noise (ddim mode is deterministic)", callback=o.seed)] = 0,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="clip x̂₀ to [-1, 1] while inverting and decoding (as adm sample; off: the bare η = 0 ODE)")] = True,
    batch_size: o.BatchSize = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier interpolation in --out")] = False,
    json_out: o.Json = False,
    weights: o.Weights = o.WeightsChoice.ema,
    device: o.Device = None,
    precision: o.Precision = o.PrecisionChoice.auto,
    quiet: o.Quiet = False,
    image_size: o.ImageSize = None,
    num_heads: o.NumHeads = None,
    num_head_channels: o.NumHeadChannels = None,
    attention_order: o.AttentionOrder = None,
    schedule: o.Schedule = None,
    diffusion_steps: o.DiffusionSteps = None,
) -> None:
    """Interpolate between two real images through their DDIM latents (or in noise space)."""
    options = InterpolateOptions(
        steps=steps, frames=frames, mode=mode.value, t=t, class_label=class_label, seed=seed,
        clip_denoised=clip, batch_size=batch_size,
    )
    check_writable(out / "summary.json")
    check_output_dir(out, overwrite=overwrite)
    reporter = Reporter(quiet=quiet)
    backend = make_backend(device, precision.value)
    overrides = o.overrides(image_size, num_heads, num_head_channels, attention_order, schedule, diffusion_steps)
    model = load_model(checkpoint, weights=weights.value, overrides=overrides, expect="diffusion")
    unet = model.config
    clf = load_model(classifier, expect="classifier", overrides={"image_size": unet.image_size}) if classifier else None
    check_interpolation(model, clf, options)  # before any image is read
    loaded = [load_endpoint(x, image_size=unet.image_size, channels=unet.in_channels) for x in (a, b)]
    images = np.stack([image for image, _ in loaded])
    sources = (loaded[0][1], loaded[1][1])
    result = run_interpolation(model, images, options, backend=backend, classifier=clf, reporter=reporter)
    summary = write_interpolation(result, out, sources=sources, command=o.command_line(ctx))
    if json_out:
        stdout_line(json.dumps(summary))
        return
    what = f"{result.schedule_steps} DDIM steps" if options.mode == "ddim" else f"noise mode, t = {t}, {result.schedule_steps} steps"
    stdout_line(f"reconstruction PSNR: A {result.psnr[0]:.2f} dB, B {result.psnr[1]:.2f} dB ({what})")
    if result.class_label is not None:
        stdout_line(f"class {result.class_label} ({result.class_source})")
    stdout_line(f"wrote {out / 'frames.npz'}, {out / 'strip.png'}, {out / 'reconstructions.png'}, {out / 'summary.json'}")
