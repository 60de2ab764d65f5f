"""`adm upsample`: super-resolution sampling from a base batch, streamed and resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adm_cli.backend import distributed, distributed_device, make_backend, torchrun_env
from adm_cli.checkpoint import load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, user_errors
from adm_cli.cli.sample import check_outputs, step_choice
from adm_cli.data.samples import sample_info
from adm_cli.generate import SampleOptions, ddim_spacing
from adm_cli.reporting import Reporter, stdout_line
from adm_cli.generate.upsample import check_base, run_upsampling

EXAMPLE = """
Examples:

  adm upsample 64_256_upsampler.pt --base samples_64.npz --out samples_256.npz --steps 250

  adm sample 64x64_diffusion.pt -n 50000 --out small.npz && \\
  adm upsample 64_256_upsampler.pt --base small.npz --out big.npz --ddim 25 -b 32 && \\
  adm evaluate VIRTUAL_imagenet256_labeled.npz big.npz

Labels in the base batch (arr_1) go to a class-conditional upsampler and into the output.
A killed run continues when the same command is run again.
"""


@user_errors
def upsample(
    ctx: typer.Context,
    checkpoint: o.Checkpoint,
    base: Annotated[Path, typer.Option("--base", help="base batch to upsample (.npz / .h5 from adm sample, or an image folder)", show_default=False)],
    out: o.SampleOut,
    num: Annotated[Optional[int], typer.Option("--num", "-n", help="upsample the first N base images (default: all)", callback=o.count)] = None,
    batch_size: o.BatchSize = 16,
    ddim: o.Ddim = None,
    steps: o.Steps = None,
    respacing: o.Respacing = None,
    nfe: o.Nfe = None,
    sampler: o.Sampler = None,
    spacing: o.Spacing = None,
    eta: o.Eta = 0.0,
    cfg_scale: o.CfgScale = 0.0,
    dynamic_threshold: o.DynamicThreshold = False,
    class_label: Annotated[Optional[int], typer.Option("--class", help="class of every image, for a base batch without labels", callback=o.non_negative_int)] = None,
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
    low_res_size: o.LowResSize = None,
    num_heads: o.NumHeads = None,
    num_head_channels: o.NumHeadChannels = None,
    attention_order: o.AttentionOrder = None,
    schedule: o.Schedule = None,
    diffusion_steps: o.DiffusionSteps = None,
) -> None:
    """Upsample a base batch with a super-resolution diffusion model (adm or guided-diffusion checkpoint)."""
    if base.exists() and base.resolve() == out.resolve():
        raise UserError("--out must differ from --base")
    check_outputs(out, grid, overwrite=overwrite)
    if not base.exists():
        raise UserError(f"base batch not found: {base}")
    choice = step_choice(ddim=ddim, steps=steps, nfe=nfe, respacing=respacing, sampler=sampler, spacing=spacing,
                         guided=cfg_scale != 0)
    if num is None:
        num = sample_info(base)[0]
        if num == 0:
            raise UserError(f"{base}: the base batch is empty")
    reporter = Reporter(quiet=quiet or not torchrun_env().is_main)
    backend = make_backend(device, precision.value, compile=compile)
    overrides = o.overrides(image_size, num_heads, num_head_channels, attention_order, schedule, diffusion_steps, low_res_size)
    model = load_model(checkpoint, weights=weights.value, overrides=overrides, expect="super-res")
    options = SampleOptions(
        num=num,
        sampler=choice.sampler,  # type: ignore[arg-type]
        respacing=ddim_spacing(choice.ddim, model.diffusion.steps) if choice.ddim else choice.spec,
        spacing=choice.spacing,
        eta=eta,
        cfg_scale=cfg_scale,
        dynamic_threshold=0.995 if dynamic_threshold else None,
        class_label=class_label,
        seed=seed,
        clip_denoised=not no_clip,
        batch_size=batch_size,
    )
    found = check_base(model, base, options)
    with distributed(backend.device) as dist:
        backend = distributed_device(backend, dist)
        final = run_upsampling(
            model, found, out, options, backend=backend, reporter=reporter, dist=dist,
            overwrite=overwrite, grid=grid, command=o.command_line(ctx),
        )
    if torchrun_env().is_main:
        stdout_line(str(final))
