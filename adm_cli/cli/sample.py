"""`adm sample`: DDPM or DDIM sampling, respacing, classifier guidance, streamed resumable output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adm_cli.backend import distributed, distributed_device, make_backend, torchrun_env
from adm_cli.checkpoint import load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, check_writable, user_errors
from adm_cli.generate import SampleOptions, ddim_spacing, run_sampling
from adm_cli.reporting import Reporter, stdout_line

EXAMPLE = """
Examples:

  adm sample runs/pets --num 64 --out samples.npz --grid grid.png     # a training run: newest checkpoint

  adm sample 256x256_diffusion.pt --classifier 256x256_classifier.pt --guidance 1.0 \\
      --ddim 25 --num 50000 --batch-size 64 --out samples.npz

  torchrun --nproc-per-node 8 -m adm_cli sample 64x64_diffusion.pt --steps 250 -n 50000 --out s.h5

A killed run continues when the same command is run again.
"""


def respacing_from(ddim: int | None, steps: int | None, respacing: str | None, sampler: str | None) -> tuple[str, str | None]:
    """(sampler, respacing spec) from the mutually exclusive step options."""
    if sampler not in (None, "ddpm", "ddim"):
        raise UserError(f"--sampler must be ddpm or ddim, got {sampler!r}")
    given = [name for name, v in (("--ddim", ddim), ("--steps", steps), ("--respacing", respacing)) if v is not None]
    if len(given) > 1:
        raise UserError(f"use one of --ddim, --steps, --respacing (got {' and '.join(given)})")
    if ddim is not None:
        if ddim <= 0:
            raise UserError(f"--ddim must be positive, got {ddim}")
        if sampler == "ddpm":
            raise UserError("--ddim K samples with DDIM; drop --sampler ddpm")
        return "ddim", f"ddim{ddim}"  # guided-diffusion's exact-stride spacing (made even if impossible)
    if steps is not None:
        if steps <= 0:
            raise UserError(f"--steps must be positive, got {steps}")
        return sampler or "ddpm", str(steps)
    return sampler or "ddpm", respacing


def check_outputs(out: Path, grid: Path | None) -> None:
    """A sample file (and grid) that can be written, checked before any model is loaded."""
    if out.suffix.lower() not in (".npz", ".h5", ".hdf5"):
        raise UserError(f"--out must end in .npz or .h5, got {out.name}")
    if grid is not None and grid.suffix.lower() != ".png":
        raise UserError(f"--grid must be a .png file, got {grid.name}")
    check_writable(out)
    if grid is not None:
        check_writable(grid)


@user_errors
def sample(
    ctx: typer.Context,
    checkpoint: o.Checkpoint,
    out: o.SampleOut,
    num: Annotated[int, typer.Option("--num", "-n", help="number of images")] = 16,
    batch_size: o.BatchSize = 16,
    ddim: o.Ddim = None,
    steps: o.Steps = None,
    respacing: o.Respacing = None,
    sampler: o.Sampler = None,
    eta: o.Eta = 0.0,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="noise-aware classifier checkpoint for guidance")] = None,
    guidance: Annotated[float, typer.Option("--guidance", "-s", help="classifier guidance scale s")] = 1.0,
    class_label: Annotated[Optional[int], typer.Option("--class", help="class of every image (default: random per image)")] = None,
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
    check_outputs(out, grid)
    chosen_sampler, spec = respacing_from(ddim, steps, respacing, sampler)
    reporter = Reporter(quiet=quiet or not torchrun_env().is_main)  # one progress bar under torchrun
    backend = make_backend(device, precision.value, compile=compile)
    overrides = o.overrides(image_size, num_heads, num_head_channels, attention_order, schedule, diffusion_steps)
    model = load_model(checkpoint, weights=weights.value, overrides=overrides, expect="diffusion")
    clf = load_model(classifier, expect="classifier", overrides={"image_size": model.config.image_size}) if classifier else None
    if ddim is not None:
        spec = ddim_spacing(ddim, model.diffusion.steps)
    options = SampleOptions(
        num=num,
        sampler=chosen_sampler,  # type: ignore[arg-type]
        respacing=spec,
        eta=eta,
        guidance_scale=guidance if clf is not None else 0.0,
        class_label=class_label,
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
