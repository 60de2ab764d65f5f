"""`adm sample`: DDPM, DDIM and fast ODE solvers, respacing, classifier and classifier-free guidance,
streamed resumable output."""

from __future__ import annotations

import math
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, NamedTuple, Optional

import typer

from adm_cli.backend import distributed, distributed_device, make_backend, torchrun_env
from adm_cli.checkpoint import load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, check_writable, user_errors
from adm_cli.diffusion import SPACINGS
from adm_cli.generate import (
    DEFAULT_SOLVER_NFE,
    MIN_NFE,
    ODE_SOLVERS,
    SAMPLERS,
    SampleOptions,
    ddim_spacing,
    default_spacing,
    nfe_of,
    run_sampling,
    steps_for_nfe,
)
from adm_cli.generate.options import check_class_choice
from adm_cli.reporting import Reporter, stdout_line

EXAMPLE = """
Examples:

  adm sample runs/pets --num 64 --out samples.npz --grid grid.png     # a training run: newest checkpoint

  adm sample 256x256_diffusion.pt --classifier 256x256_classifier.pt --guidance 1.0 \\
      --ddim 25 --num 50000 --batch-size 64 --out samples.npz

  adm sample 256x256_diffusion.pt --classifier 256x256_classifier.pt --guidance 8 \\
      --sampler dpm++2m --nfe 20 -n 50000 --out s.npz       # DPM-Solver++(2M), 20 evaluations

  adm sample runs/pets --cfg-scale 3 --sampler unipc --nfe 15 --class 2 -n 16 --out cats.npz

  adm sample 64x64_diffusion.pt --classes balanced -n 50000 --ddim 25 --out s.npz    # 50 of each of 1000 classes

  torchrun --nproc-per-node 8 -m adm_cli sample 64x64_diffusion.pt --steps 250 -n 50000 --out s.h5

Samplers: ddpm (default; all trained steps unless --steps/--respacing), ddim, dpm++2m, dpm++3m,
unipc, heun (the last four: 20 network evaluations unless --nfe/--steps). Classifier guidance
(--classifier, --guidance s) and classifier-free guidance (--cfg-scale w) work with every sampler,
together too.

A killed run continues when the same command is run again.
"""


class ClassesChoice(str, Enum):
    """How --classes draws the images' classes (`SampleOptions.classes`)."""

    random = "random"
    balanced = "balanced"


class StepChoice(NamedTuple):
    """The resolved step options: sampler, respacing spec (a step count when `spacing` is set), spacing,
    and the --ddim K that still needs the model's step count (`ddim_spacing`)."""

    sampler: str
    spec: str | None
    spacing: str | None
    ddim: int | None


def step_choice(
    *,
    ddim: int | None,
    steps: int | None,
    nfe: int | None,
    respacing: str | None,
    sampler: str | None,
    spacing: str | None,
    guided: bool,
) -> StepChoice:
    """One consistent reading of --sampler / --ddim / --steps / --nfe / --respacing / --spacing."""
    if sampler is not None and sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if spacing is not None and spacing not in SPACINGS:
        raise UserError(f"--spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    given = [name for name, v in (("--ddim", ddim), ("--steps", steps), ("--nfe", nfe), ("--respacing", respacing)) if v is not None]
    if len(given) > 1:
        raise UserError(f"use one of --ddim, --steps, --nfe, --respacing (got {' and '.join(given)})")
    if ddim is not None:
        if ddim <= 0:
            raise UserError(f"--ddim must be positive, got {ddim}")
        if sampler not in (None, "ddim"):
            raise UserError(f"--ddim K samples with DDIM; drop --sampler {sampler} (use --steps or --nfe)")
        if spacing is not None:
            raise UserError("--ddim K uses guided-diffusion's ddimK steps; use --sampler ddim --steps K --spacing S instead")
        return StepChoice("ddim", f"ddim{ddim}", None, ddim)
    sampler = sampler or "ddpm"
    if respacing is not None:
        if spacing is not None:
            raise UserError("--respacing places the steps itself; drop --spacing (or use --steps/--nfe)")
        return StepChoice(sampler, respacing, None, None)
    if steps is not None:
        if steps <= 0:
            raise UserError(f"--steps must be positive, got {steps}")
        count = steps
        if nfe_of(sampler, count) < MIN_NFE[sampler]:
            raise UserError(f"--steps {steps} is too few for {sampler}: it needs at least {MIN_NFE[sampler]} network evaluations")
    elif nfe is not None:
        count = steps_for_nfe(sampler, nfe)
    elif sampler in ODE_SOLVERS:
        count = steps_for_nfe(sampler, DEFAULT_SOLVER_NFE)
    else:
        if spacing is not None:
            raise UserError("--spacing needs a step count: --steps K or --nfe N")
        return StepChoice(sampler, None, None, None)  # every trained step
    if sampler == "ddim" and spacing is None:
        # --sampler ddim --steps/--nfe K is --ddim K: guided-diffusion's stride from t = 0, which
        # never takes the cosine schedule's degenerate last step (ᾱ ≈ 2e-9) where the classifier's
        # score shift, unclipped as in the reference, saturates every image
        return StepChoice("ddim", f"ddim{count}", None, count)
    spacing = spacing or default_spacing(sampler, guided)
    return StepChoice(sampler, str(count), spacing, None)


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """'LO,HI' -> (LO, HI) in original timesteps."""
    if text is None:
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--guidance-interval must be LO,HI (original timesteps), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise UserError(f"--guidance-interval needs 0 <= LO <= HI, got {text!r}")
    return lo, hi


def check_outputs(out: Path, grid: Path | None, *, overwrite: bool = False) -> None:
    """A sample file (and grid) that can be written, checked before any model is loaded: an
    existing path (a symbolic link too, dangling or not) is replaced only with --overwrite."""
    if out.suffix.lower() not in (".npz", ".h5", ".hdf5"):
        raise UserError(f"--out must end in .npz or .h5, got {out.name}")
    if grid is not None and grid.suffix.lower() != ".png":
        raise UserError(f"--grid must be a .png file, got {grid.name}")
    for path in (out, grid):
        if path is None:
            continue
        if os.path.isdir(path):
            raise UserError(f"{path} is a directory")
        if os.path.lexists(path) and not overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it")
        check_writable(path)


@user_errors
def sample(
    ctx: typer.Context,
    checkpoint: o.Checkpoint,
    out: o.SampleOut,
    num: o.Num = 16,
    batch_size: o.BatchSize = 16,
    ddim: o.Ddim = None,
    steps: o.Steps = None,
    respacing: o.Respacing = None,
    nfe: o.Nfe = None,
    sampler: o.Sampler = None,
    spacing: o.Spacing = None,
    eta: o.Eta = 0.0,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="noise-aware classifier checkpoint for guidance")] = None,
    guidance: o.Guidance = None,
    cfg_scale: o.CfgScale = 0.0,
    guidance_interval: o.GuidanceInterval = None,
    dynamic_threshold: o.DynamicThreshold = False,
    class_label: Annotated[Optional[int], typer.Option("--class", help="class of every image (default: as --classes says)", callback=o.non_negative_int)] = None,
    classes: Annotated[
        ClassesChoice,
        typer.Option(
            "--classes",
            help="random: each image's class drawn from its own seed; balanced: exactly N/K images of each of the K "
            "classes (N a multiple of K), in an order fixed by --seed",
        ),
    ] = ClassesChoice.random,
    seed: o.Seed = 0,
    grid: o.Grid = None,
    no_clip: o.NoClip = False,
    overwrite: o.Overwrite = False,
    weights: o.Weights = o.WeightsChoice.ema,
    device: o.Device = None,
    precision: o.Precision = o.PrecisionChoice.auto,
    compile: o.Compile = False,
    quiet: o.Quiet = False,
    image_size: o.ImageSize = None,
    num_heads: o.NumHeads = None,
    num_head_channels: o.NumHeadChannels = None,
    attention_order: o.AttentionOrder = None,
    schedule: o.Schedule = None,
    diffusion_steps: o.DiffusionSteps = None,
) -> None:
    """Sample images from a diffusion model (adm or guided-diffusion checkpoint) into a sample file."""
    check_outputs(out, grid, overwrite=overwrite)
    if guidance is not None and classifier is None:
        raise UserError("--guidance needs --classifier CKPT (for classifier-free guidance use --cfg-scale)")
    check_class_choice(classes.value, class_label)  # before the model loads
    guidance = 1.0 if guidance is None else guidance
    choice = step_choice(ddim=ddim, steps=steps, nfe=nfe, respacing=respacing, sampler=sampler, spacing=spacing,
                         guided=(classifier is not None and guidance != 0) or cfg_scale != 0)
    interval = parse_interval(guidance_interval)
    reporter = Reporter(quiet=quiet or not torchrun_env().is_main)  # one progress bar under torchrun
    backend = make_backend(device, precision.value, compile=compile)
    overrides = o.overrides(image_size, num_heads, num_head_channels, attention_order, schedule, diffusion_steps)
    model = load_model(checkpoint, weights=weights.value, overrides=overrides, expect="diffusion")
    clf = load_model(classifier, expect="classifier", overrides={"image_size": model.config.image_size}) if classifier else None
    options = SampleOptions(
        num=num,
        sampler=choice.sampler,  # type: ignore[arg-type]
        respacing=ddim_spacing(choice.ddim, model.diffusion.steps) if choice.ddim else choice.spec,
        spacing=choice.spacing,
        eta=eta,
        guidance_scale=guidance if clf is not None else 0.0,
        cfg_scale=cfg_scale,
        guidance_interval=interval,
        dynamic_threshold=0.995 if dynamic_threshold else None,
        class_label=class_label,
        classes=classes.value,
        seed=seed,
        clip_denoised=not no_clip,
        batch_size=batch_size,
    )
    with distributed(backend.device) as dist:
        backend = distributed_device(backend, dist)
        final = run_sampling(
            model, out, options, backend=backend, classifier=clf, reporter=reporter, dist=dist,
            overwrite=overwrite, grid=grid, command=o.command_line(ctx),
        )
    if torchrun_env().is_main:
        stdout_line(str(final))
