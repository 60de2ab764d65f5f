"""Option definitions shared by the commands (defined once, reused everywhere)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class AttentionOrderChoice(str, Enum):
    legacy = "legacy"
    new = "new"


class ScheduleChoice(str, Enum):
    linear = "linear"
    cosine = "cosine"


class WeightsChoice(str, Enum):
    ema = "ema"
    model = "model"


Checkpoint = Annotated[Path, typer.Argument(help="adm checkpoint, or a guided-diffusion .pt state dict", show_default=False)]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: CUDA if present)")]
Precision = Annotated[
    PrecisionChoice,
    typer.Option("--precision", help="network precision; fp32 matches guided-diffusion exactly; auto = bf16 on GPUs, fp32 on CPU"),
]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the network (GPU, long runs)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or messages on stderr")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace a finished output file")]
Seed = Annotated[int, typer.Option("--seed", help="image i uses seed + i (independent of batch size)")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="images per forward pass (does not change the images)")]
Weights = Annotated[WeightsChoice, typer.Option("--weights", help="adm checkpoints: EMA or raw weights")]

# Sampling: the step options (one of --ddim / --steps / --respacing), shared by sample and upsample.
Ddim = Annotated[Optional[int], typer.Option("--ddim", help="DDIM with K steps (guided-diffusion's ddimK spacing)")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="K evenly respaced steps")]
Respacing = Annotated[Optional[str], typer.Option("--respacing", help="guided-diffusion spec: 250, ddim25 or section counts 90,60,60,20,20")]
Sampler = Annotated[
    Optional[str],
    typer.Option(
        "--sampler",
        help="ddpm (ancestral; uses a learned variance), ddim, dpm++2m, dpm++3m (DPM-Solver++ multistep), unipc "
        "(UniPC-bh2, order 2) or heun (EDM Alg. 1, 2 evaluations a step). The ODE solvers (ddim, dpm++, unipc, "
        "heun) use only the ε channels of learned-Σ models",
        show_default="ddpm",
    ),
]
Nfe = Annotated[
    Optional[int],
    typer.Option("--nfe", help="network evaluations per image (Heun: 2 a step, last step 1); default for the new solvers: 20"),
]
Spacing = Annotated[
    Optional[str],
    typer.Option(
        "--spacing",
        help="where the solver steps lie: time-uniform, logsnr or karras (EDM, rho 7). Default: karras for heun; "
        "time-uniform for dpm++/unipc when guided, logsnr otherwise (the solvers' authors' advice)",
        show_default=False,
    ),
]
Eta = Annotated[float, typer.Option("--eta", help="DDIM η (0: deterministic, 1: DDPM-like noise)")]
CfgScale = Annotated[
    float,
    typer.Option(
        "--cfg-scale",
        help="classifier-free guidance w: ε = (1+w)·ε(x,y) − w·ε(x,∅); 0 = the conditional model. diffusers' "
        "guidance_scale is 1+w. Needs a model trained with --label-dropout (null class); one doubled batch per evaluation",
    ),
]
GuidanceInterval = Annotated[
    Optional[str],
    typer.Option("--guidance-interval", help="guide only at original timesteps LO..HI, e.g. 0,600 (default: everywhere)"),
]
DynamicThreshold = Annotated[
    bool,
    typer.Option("--dynamic-threshold", help="DPM-Solver++'s dynamic thresholding of x̂₀ (ratio 0.995) instead of clipping; for large guidance scales"),
]
SampleOut = Annotated[Path, typer.Option("--out", "-o", help="output .npz (arr_0 uint8 NHWC, arr_1 labels) or .h5")]
Grid = Annotated[Optional[Path], typer.Option("--grid", help="also write a PNG grid of the first 64 images")]
NoClip = Annotated[bool, typer.Option("--no-clip", help="do not clip x̂₀ to [-1, 1]")]

# What the shapes of a bare guided-diffusion state dict cannot tell (normally from the built-in table).
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="[OpenAI files] output side in pixels", rich_help_panel="Overrides for bare state dicts")]
NumHeads = Annotated[Optional[int], typer.Option("--num-heads", help="[OpenAI files] attention heads", rich_help_panel="Overrides for bare state dicts")]
NumHeadChannels = Annotated[Optional[int], typer.Option("--num-head-channels", help="[OpenAI files] channels per attention head", rich_help_panel="Overrides for bare state dicts")]
AttentionOrder = Annotated[Optional[AttentionOrderChoice], typer.Option("--attention-order", help="[OpenAI files] qkv split order", rich_help_panel="Overrides for bare state dicts")]
Schedule = Annotated[Optional[ScheduleChoice], typer.Option("--schedule", help="[OpenAI files] noise schedule", rich_help_panel="Overrides for bare state dicts")]
DiffusionSteps = Annotated[Optional[int], typer.Option("--diffusion-steps", help="[OpenAI files] trained diffusion steps T", rich_help_panel="Overrides for bare state dicts")]
LowResSize = Annotated[Optional[int], typer.Option("--low-res-size", help="[OpenAI files] super-resolution input side", rich_help_panel="Overrides for bare state dicts")]


def overrides(
    image_size: int | None = None,
    num_heads: int | None = None,
    num_head_channels: int | None = None,
    attention_order: AttentionOrderChoice | None = None,
    schedule: ScheduleChoice | None = None,
    diffusion_steps: int | None = None,
    low_res_size: int | None = None,
) -> dict:
    """The override dict `checkpoint.load_model` takes, from the shared flags."""
    return {
        "image_size": image_size,
        "num_heads": num_heads,
        "num_head_channels": num_head_channels,
        "attention_order": attention_order.value if attention_order else None,
        "schedule": schedule.value if schedule else None,
        "steps": diffusion_steps,
        "low_res_size": low_res_size,
    }


def command_line(ctx: typer.Context) -> str:
    """The current command with the values it ran with (for file metadata), e.g.
    `adm sample m.pt --num 16 --out s.npz --ddim 25`."""
    import enum
    import shlex

    words = ["adm", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False:
            continue
        value = value.value if isinstance(value, enum.Enum) else value
        if param.param_type_name == "argument":
            words.append(str(value))
        elif value is True:
            words.append(param.opts[0])
        elif value != param.default:
            words += [param.opts[0], str(value)]
    return shlex.join(words)

InceptionWeights = Annotated[
    Optional[Path],
    typer.Option(
        "--inception-weights",
        envvar="ADM_INCEPTION_WEIGHTS",
        help="FID Inception weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or NVIDIA's "
        "inception-2015-12-05.pt); default: the cache, downloaded once and SHA-256 checked",
        show_default=False,
    ),
]
CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", envvar="ADM_CACHE", help="where downloaded weights (and features of read-only inputs) are kept"),
]
