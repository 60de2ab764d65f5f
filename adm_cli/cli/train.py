"""`adm train-diffusion` and `adm train-classifier`: parse, build configs, run, report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from adm_cli.backend import torchrun_env
from adm_cli.checkpoint import DIFFUSION_OVERRIDES, UNET_OVERRIDES, load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, check_writable, user_errors
from adm_cli.cli.resume import check_resume_options
from adm_cli.config import DEFAULT_TRAIN_PRESET, TRAIN_PRESETS, DiffusionConfig, default_training_diffusion
from adm_cli.reporting import Reporter, stdout_line
from adm_cli.train.loop import RunOptions
from adm_cli.train.run_dir import RunDir
from adm_cli.train.init import classifier_config_from_init, load_init
from adm_cli.train.session import DataSpec, build_classifier_configs, build_diffusion_configs, build_finetune_configs, run_training

DIFFUSION_EXAMPLE = """
Examples:

  adm train-diffusion synthetic --out runs/shapes --preset tiny --minutes 5

  adm train-diffusion ~/data/faces --out runs/faces --image-size 64 --preset small \\
      --batch-size 64 --precision bf16 --steps 200000 --preview-every 5000

  adm train-diffusion --out runs/faces --resume --steps 400000      # continue, same settings

  adm train-diffusion ~/data/birds --out runs/birds --init 64x64_diffusion.pt \
      --label-dropout 0.1 --batch-size 16 --lr 1e-5 --grad-checkpoint    # fine-tune OpenAI's model

--init CKPT starts from the weights of any checkpoint adm samples (OpenAI's files, an adm
checkpoint or run directory): its architecture and schedule, the data's classes (a new label
embedding when they differ; conditional <-> unconditional both work), a fresh optimizer, EMA from
these weights. --preset then only gives the training defaults.

--resume keeps the run's options (--steps, --log-every, --save-every, --preview-every, --keep, ...)
unless given again. What the run trains (architecture, optimisation, data) may be repeated with the
run's values, so the first command with --resume added continues; a differing value is refused.
One process at a time trains a run directory.

  torchrun --nproc-per-node 8 -m adm_cli train-diffusion imagenet/ --out runs/in64 \\
      --preset imagenet64 --batch-size 2048 --microbatch 64 --precision bf16

DATA: an image folder (classes from sub-folders or guided-diffusion's "class_name.png" prefix),
.npz (arr_0 images, arr_1 labels), .h5, an MNIST/Fashion-MNIST IDX folder, or "synthetic".
--batch-size is the global batch (all processes together).

Objectives beyond ADM (each stored in the checkpoint; every sampler honours --prediction):

  adm train-diffusion data/ --out runs/v --prediction v --min-snr-gamma 5     # Hang et al. 2023
  adm train-diffusion data/ --out runs/p2 --p2-gamma 1 --p2-k 1               # Choi et al. 2022
  adm train-diffusion data/ --out runs/ip --input-perturbation 0.1            # Ning et al. 2023
"""

CLASSIFIER_EXAMPLE = """
Examples:

  adm train-classifier synthetic --out runs/shapes-clf --diffusion runs/shapes --minutes 2

  adm train-classifier ~/data/imagenet --out runs/clf128 --image-size 128 \\
      --schedule linear --steps 300000 --lr-schedule linear --batch-size 256

  adm train-classifier ~/data/birds --out runs/birds-clf --init 64x64_classifier.pt \
      --diffusion runs/birds --freeze-encoder --minutes 30     # fine-tune OpenAI's classifier

The classifier sees x_t at t from the diffusion model's schedule (--diffusion CKPT_OR_RUN, or
--schedule/--diffusion-steps); --clean trains on clean images (t = 0). --init CKPT starts from a
classifier's weights (a new head when the class count differs); --freeze-encoder trains the head only.
"""


class LossChoice(str, Enum):
    simple = "simple"
    hybrid = "hybrid"
    kl = "kl"


class PredictionChoice(str, Enum):
    eps = "eps"
    x0 = "x0"
    v = "v"


MEAN_TYPES = {"eps": "epsilon", "x0": "x0", "v": "v"}


class TimestepChoice(str, Enum):
    uniform = "uniform"
    loss_second_moment = "loss-second-moment"


class LRScheduleChoice(str, Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class LabelsChoice(str, Enum):
    auto = "auto"
    folder = "folder"
    prefix = "prefix"
    none = "none"


class PoolChoice(str, Enum):
    attention = "attention"
    adaptive = "adaptive"
    spatial = "spatial"
    spatial_v2 = "spatial_v2"


ARCH = "Architecture (default: from --preset)"
OPT = "Optimisation"
RUN = "Run control"
DATA = "Data"

Data = Annotated[Optional[str], typer.Argument(help="image folder, .npz, .h5, IDX folder, or 'synthetic[:N]'", show_default=False)]
Out = Annotated[Path, typer.Option("--out", "-o", help="run directory (created; must be new unless --resume)")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the run in --out with its stored settings", rich_help_panel=RUN)]
Steps = Annotated[Optional[int], typer.Option("--steps", help="stop at this total step count", rich_help_panel=RUN)]
Minutes = Annotated[Optional[float], typer.Option("--minutes", help="stop after this many minutes (this invocation)", rich_help_panel=RUN, callback=o.positive_number)]
SaveEvery = Annotated[int, typer.Option("--save-every", help="checkpoint every N steps", rich_help_panel=RUN)]
SaveMinutes = Annotated[float, typer.Option("--save-minutes", help="...and at least every M minutes", rich_help_panel=RUN)]
LogEvery = Annotated[int, typer.Option("--log-every", help="metrics.jsonl line every N steps", rich_help_panel=RUN)]
Keep = Annotated[int, typer.Option("--keep", help="checkpoints to keep (newest)", rich_help_panel=RUN)]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", help="centre-crop and resize images to this side", rich_help_panel=DATA)]
Channels = Annotated[Optional[int], typer.Option("--channels", help="1 (grayscale) or 3 (RGB); default: the data's", rich_help_panel=DATA)]
Labels = Annotated[LabelsChoice, typer.Option("--labels", help="where classes come from (folder: sub-folders; prefix: 'class_x.png')", rich_help_panel=DATA)]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="global batch size (all processes)", rich_help_panel=OPT)]
Microbatch = Annotated[Optional[int], typer.Option("--microbatch", help="per-process microbatch; gradients accumulate", rich_help_panel=OPT)]
LR = Annotated[Optional[float], typer.Option("--lr", help="AdamW learning rate", rich_help_panel=OPT)]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay", rich_help_panel=OPT)]
Warmup = Annotated[Optional[int], typer.Option("--warmup-steps", help="linear LR warm-up steps", rich_help_panel=OPT)]
LRSchedule = Annotated[Optional[LRScheduleChoice], typer.Option("--lr-schedule", help="after warm-up: constant, or anneal to 0 at --steps", rich_help_panel=OPT)]
GradClip = Annotated[Optional[float], typer.Option("--grad-clip", help="clip the gradient norm", rich_help_panel=OPT)]
Ema = Annotated[Optional[str], typer.Option("--ema", help="EMA rate(s), comma-separated; the first is used for sampling", rich_help_panel=OPT)]
EmaWarmup = Annotated[Optional[bool], typer.Option("--ema-warmup/--no-ema-warmup", help="EMA rate min(r, (1+n)/(10+n)); off = guided-diffusion", rich_help_panel=OPT)]
Init = Annotated[
    Optional[Path],
    typer.Option("--init", help="start from this checkpoint's weights (OpenAI file, adm checkpoint or run directory): fine-tuning", rich_help_panel=ARCH, show_default=False),
]
GradCheckpoint = Annotated[
    bool,
    typer.Option("--grad-checkpoint", help="recompute each block's activations in backward: much less memory, same losses and gradients, ~1 more forward per step", rich_help_panel=OPT),
]
TrainPrecision = Annotated[Optional[str], typer.Option("--precision", help="fp32 (reference-exact), bf16 or fp16 (dynamic loss scaling); default bf16 on GPUs that compute it natively, else fp32", rich_help_panel=OPT)]
TrainSeed = Annotated[Optional[int], typer.Option("--seed", help="data order, noise and t", rich_help_panel=OPT, callback=o.seed)]
Flip = Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="random horizontal flips", rich_help_panel=OPT)]
LogTo = Annotated[Optional[list[str]], typer.Option("--log-to", help="also send metrics, previews and run.json to tensorboard (RUN/tensorboard) and/or wandb; repeatable or comma-separated, 'none' for neither (needs pip install 'adm[tensorboard]' / 'adm[wandb]')", rich_help_panel=RUN)]
WandbProject = Annotated[Optional[str], typer.Option("--wandb-project", envvar="WANDB_PROJECT", help="W&B project for --log-to wandb (default: $WANDB_PROJECT, else adm)", rich_help_panel=RUN)]


def _log_to(values: list[str] | None) -> tuple[str, ...]:
    """--log-to tensorboard --log-to wandb, or --log-to tensorboard,wandb; 'none' for neither."""
    names = (n.strip().lower() for v in values or () for n in v.split(","))
    return tuple(n for n in names if n and n != "none")  # an unknown name: RunOptions says which


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{name} takes comma-separated numbers, got {text!r}") from None


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{name} takes comma-separated integers (pixels), got {text!r}") from None


def _precision(value: str | None, device: str | None) -> str:
    from adm_cli.backend import resolve_device, resolve_precision

    return resolve_precision(value, resolve_device(device))


def _train_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The optimisation options both commands share (None = the preset's or default value)."""
    schedule = params["lr_schedule"].value if params["lr_schedule"] else None
    return {
        "batch_size": params["batch_size"], "microbatch": params["microbatch"], "lr": params["lr"],
        "weight_decay": params["weight_decay"], "warmup_steps": params["warmup_steps"], "lr_schedule": schedule,
        "grad_clip": params["grad_clip"], "ema_rates": _floats(params["ema"], "--ema"), "ema_warmup": params["ema_warmup"],
        "precision": _precision(params["precision"], params["device"]), "seed": params["seed"], "flip": params["flip"],
        "anneal_steps": params["steps"] if schedule in ("linear", "cosine") else None,
    }


def _mean_type(prediction: PredictionChoice | None, predict_x0: bool | None) -> str | None:
    """DiffusionConfig.mean_type from --prediction and the older --predict-x0/--predict-eps (None: the preset's)."""
    legacy = None if predict_x0 is None else ("x0" if predict_x0 else "eps")
    if prediction is not None and legacy is not None and prediction.value != legacy:
        raise UserError(f"--prediction {prediction.value} contradicts --predict-{legacy}; give one of them")
    chosen = prediction.value if prediction is not None else legacy
    return None if chosen is None else MEAN_TYPES[chosen]


def _run_options(steps, minutes, save_every, save_minutes, log_every, keep, **extra) -> RunOptions:
    return RunOptions(steps=steps, minutes=minutes, save_every=save_every, save_minutes=save_minutes,
                      log_every=log_every, keep=keep, **extra)


# What a resumed run may change: how long and how it runs, not what it trains.
RESUMABLE = {"data", "out", "resume", "steps", "minutes", "save_every", "save_minutes", "log_every", "keep",
             "preview_every", "preview_images", "eval_every", "device", "compile", "grad_checkpoint", "quiet",
             "log_to", "wandb_project"}


def _explicit(ctx: typer.Context) -> set[str]:
    """The run options given on the command line (a resume keeps run.json's values of the rest)."""
    names = ("steps", "save_every", "save_minutes", "log_every", "keep", "preview_every", "preview_images", "eval_every",
             "log_to", "wandb_project")
    given = set()
    for name in names:
        source = ctx.get_parameter_source(name) if name in ctx.params else None
        if source is not None and source.name == "COMMANDLINE":
            given.add(name)
    return given


def _check_resume_flags(ctx: typer.Context, resume: bool, *, out: Path, kind: str, make_configs, init=None) -> None:
    """On --resume the run's stored settings hold: an option given again with the run's value is
    accepted, one that would change them is refused (all named in one `error:` line). --init is
    accepted when it is the file the run started from (same SHA-256)."""
    if not resume:
        return
    if init is not None:
        started = RunDir(out).read_description().get("init") or {}
        if started.get("sha256") != init.sha256:
            was = f"the run started from {started['path']}" if started else "the run did not start from a checkpoint"
            raise UserError(f"--init {init.loaded.path} is not the file the run started from ({was}); drop --init to resume")
    check_resume_options(ctx, out=out, kind=kind, make_configs=make_configs, resumable=RESUMABLE | {"init"})


def _report(summary: dict[str, Any], out: Path, reporter: Reporter) -> None:
    if not torchrun_env().is_main:
        return
    reporter.info(
        f"stopped at step {summary['step']} ({summary['stopped_by']}); "
        f"{summary['steps_this_run']} steps this run, {summary['skipped']} skipped"
    )
    stdout_line(str(summary["checkpoint"] or out))


@user_errors
def train_diffusion(
    ctx: typer.Context,
    out: Out,
    data: Data = None,
    preset: Annotated[str, typer.Option("--preset", help=f"starting configuration: {', '.join(TRAIN_PRESETS)} (with --init: training defaults only)")] = DEFAULT_TRAIN_PRESET,
    init: Init = None,
    class_cond: Annotated[Optional[bool], typer.Option("--class-cond/--no-class-cond", help="condition on labels (default: when the data has labels)", rich_help_panel=ARCH)] = None,
    model_channels: Annotated[Optional[int], typer.Option("--model-channels", help="base width", rich_help_panel=ARCH)] = None,
    num_res_blocks: Annotated[Optional[int], typer.Option("--num-res-blocks", help="res blocks per resolution", rich_help_panel=ARCH)] = None,
    channel_mult: Annotated[Optional[str], typer.Option("--channel-mult", help="width multipliers per level, e.g. 1,2,2", rich_help_panel=ARCH)] = None,
    attention_resolutions: Annotated[Optional[str], typer.Option("--attention-resolutions", help="in pixels, e.g. 16,8", rich_help_panel=ARCH)] = None,
    num_heads: Annotated[Optional[int], typer.Option("--num-heads", help="attention heads (instead of --num-head-channels)", rich_help_panel=ARCH)] = None,
    num_head_channels: Annotated[Optional[int], typer.Option("--num-head-channels", help="channels per attention head", rich_help_panel=ARCH)] = None,
    num_heads_upsample: Annotated[Optional[int], typer.Option("--num-heads-upsample", help="heads in the decoder", rich_help_panel=ARCH)] = None,
    resblock_updown: Annotated[Optional[bool], typer.Option("--resblock-updown/--no-resblock-updown", help="BigGAN up/down blocks", rich_help_panel=ARCH)] = None,
    scale_shift_norm: Annotated[Optional[bool], typer.Option("--scale-shift-norm/--no-scale-shift-norm", help="AdaGN", rich_help_panel=ARCH)] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", rich_help_panel=ARCH)] = None,
    learn_sigma: Annotated[Optional[bool], typer.Option("--learn-sigma/--no-learn-sigma", help="learned variance (hybrid loss)", rich_help_panel=ARCH)] = None,
    low_res_size: Annotated[Optional[int], typer.Option("--low-res-size", help="train a super-resolution model from this size", rich_help_panel=ARCH)] = None,
    diffusion_steps: Annotated[Optional[int], typer.Option("--diffusion-steps", help="T", rich_help_panel=ARCH)] = None,
    schedule: Annotated[Optional[o.ScheduleChoice], typer.Option("--schedule", help="noise schedule", rich_help_panel=ARCH)] = None,
    prediction: Annotated[Optional[PredictionChoice], typer.Option("--prediction", help="what the network predicts: eps (ε, default), x0, or v = α_t ε − σ_t x_0 (Salimans & Ho 2022)", rich_help_panel=ARCH)] = None,
    predict_x0: Annotated[Optional[bool], typer.Option("--predict-x0/--predict-eps", help="same as --prediction x0 / eps", rich_help_panel=ARCH)] = None,
    loss: Annotated[Optional[LossChoice], typer.Option("--loss", help="simple (MSE of the prediction), hybrid (+ λ L_vlb, learned σ) or kl", rich_help_panel=OPT)] = None,
    min_snr_gamma: Annotated[Optional[float], typer.Option("--min-snr-gamma", help="Min-SNR-γ: weight the MSE term by min(SNR_t, γ) in x_0 terms (Hang et al. 2023 use γ = 5); not with --loss kl or --p2-gamma", rich_help_panel=OPT)] = None,
    p2_gamma: Annotated[Optional[float], typer.Option("--p2-gamma", help="P2: weight the MSE term by 1/(k + SNR_t)^γ (Choi et al. 2022 use γ = 0.5 or 1, k = 1); 0 = off", rich_help_panel=OPT)] = None,
    p2_k: Annotated[Optional[float], typer.Option("--p2-k", help="k of P2 weighting (default 1)", rich_help_panel=OPT)] = None,
    input_perturbation: Annotated[Optional[float], typer.Option("--input-perturbation", help="DDPM-IP: x_t made from ε + γ ξ, ξ ~ N(0, I), the target still ε (Ning et al. 2023 use γ = 0.1); 0 = off", rich_help_panel=OPT)] = None,
    timestep_sampling: Annotated[Optional[TimestepChoice], typer.Option("--timestep-sampling", help="uniform or loss-second-moment (IDDPM)", rich_help_panel=OPT)] = None,
    label_dropout: Annotated[Optional[float], typer.Option("--label-dropout", help="drop labels with this probability (classifier-free guidance)", rich_help_panel=OPT)] = None,
    batch_size: BatchSizeOpt = None,
    microbatch: Microbatch = None,
    lr: LR = None,
    weight_decay: WeightDecay = None,
    warmup_steps: Warmup = None,
    lr_schedule: LRSchedule = None,
    grad_clip: GradClip = None,
    ema: Ema = None,
    ema_warmup: EmaWarmup = None,
    precision: TrainPrecision = None,
    seed: TrainSeed = None,
    flip: Flip = None,
    image_size: ImageSizeOpt = None,
    channels: Channels = None,
    labels: Labels = LabelsChoice.auto,
    steps: Steps = None,
    minutes: Minutes = None,
    save_every: SaveEvery = 1000,
    save_minutes: SaveMinutes = 15.0,
    log_every: LogEvery = 50,
    keep: Keep = 3,
    preview_every: Annotated[Optional[int], typer.Option("--preview-every", help="PNG grid of EMA samples every N steps (and at the end)", rich_help_panel=RUN)] = None,
    preview_images: Annotated[int, typer.Option("--preview-images", help="images per preview grid", rich_help_panel=RUN)] = 16,
    resume: Resume = False,
    device: o.Device = None,
    compile: o.Compile = False,
    grad_checkpoint: GradCheckpoint = False,
    log_to: LogTo = None,
    wandb_project: WandbProject = None,
    quiet: o.Quiet = False,
) -> None:
    """Train an ADM diffusion model (or a super-resolution model with --low-res-size)."""
    check_writable(out / "run.json")
    reporter = Reporter(quiet=quiet or not torchrun_env().is_main)
    unet = {
        "image_size": image_size, "model_channels": model_channels, "num_res_blocks": num_res_blocks,
        "channel_mult": _floats(channel_mult, "--channel-mult"),
        "attention_resolutions": _ints(attention_resolutions, "--attention-resolutions"),
        "num_heads": num_heads, "num_head_channels": num_head_channels, "num_heads_upsample": num_heads_upsample,
        "resblock_updown": resblock_updown, "use_scale_shift_norm": scale_shift_norm, "dropout": dropout,
        "learn_sigma": learn_sigma, "low_res_size": low_res_size,
    }
    diffusion = {
        "steps": diffusion_steps, "schedule": schedule.value if schedule else None,
        "mean_type": _mean_type(prediction, predict_x0),
    }
    train = _train_overrides(ctx.params)
    train.update(loss=loss.value if loss else None, timestep_sampling=timestep_sampling.value if timestep_sampling else None,
                 label_dropout=label_dropout, min_snr_gamma=min_snr_gamma, p2_gamma=p2_gamma, p2_k=p2_k,
                 input_perturbation=input_perturbation)

    # for a bare state dict, what its shapes cannot tell (as adm sample's overrides)
    hints = {k: {**unet, **diffusion}.get(k) for k in (*UNET_OVERRIDES, *DIFFUSION_OVERRIDES)}
    source = load_init(init, kinds=("diffusion", "super-res"), overrides=hints) if init is not None else None

    def make_configs(data) -> dict[str, Any]:
        if source is not None:
            spec, config = build_finetune_configs(data, source, preset=preset, unet=unet, diffusion=diffusion, train=train, class_cond=class_cond)
        else:
            spec, config = build_diffusion_configs(data, preset=preset, unet=unet, diffusion=diffusion, train=train, class_cond=class_cond)
        return {"unet": spec.unet.to_dict(), "diffusion": spec.diffusion.to_dict(), "train": config.to_dict()}

    if source is not None and image_size is None:
        image_size = source.loaded.config.image_size  # the data is resized to the model's size
    _check_resume_flags(ctx, resume, out=out, kind="diffusion", make_configs=make_configs, init=source)
    data_spec = DataSpec(data, image_size, channels, labels.value) if data else None
    summary = run_training(
        "diffusion", out, data_spec=data_spec, make_configs=make_configs,
        options=_run_options(steps, minutes, save_every, save_minutes, log_every, keep, preview_every=preview_every,
                             grad_checkpoint=grad_checkpoint, log_to=_log_to(log_to), wandb_project=wandb_project),
        device=device, compile=compile, reporter=reporter, resume=resume, command=o.command_line(ctx),
        preview_images=preview_images, explicit=_explicit(ctx), init=source,
    )
    _report(summary, out, reporter)


@user_errors
def train_classifier(
    ctx: typer.Context,
    out: Out,
    data: Data = None,
    diffusion: Annotated[Optional[Path], typer.Option("--diffusion", help="diffusion checkpoint or run directory whose schedule the classifier must match", rich_help_panel=ARCH)] = None,
    schedule: Annotated[Optional[o.ScheduleChoice], typer.Option("--schedule", help="noise schedule (without --diffusion; default: train-diffusion's, cosine)", rich_help_panel=ARCH)] = None,
    diffusion_steps: Annotated[Optional[int], typer.Option("--diffusion-steps", help="T (without --diffusion; default 1000)", rich_help_panel=ARCH)] = None,
    clean: Annotated[bool, typer.Option("--clean", help="train on clean images (t = 0), e.g. to judge samples", rich_help_panel=ARCH)] = False,
    model_channels: Annotated[Optional[int], typer.Option("--model-channels", help="classifier width (default 128)", rich_help_panel=ARCH)] = None,
    num_res_blocks: Annotated[Optional[int], typer.Option("--num-res-blocks", help="classifier depth (default 2)", rich_help_panel=ARCH)] = None,
    channel_mult: Annotated[Optional[str], typer.Option("--channel-mult", rich_help_panel=ARCH)] = None,
    attention_resolutions: Annotated[Optional[str], typer.Option("--attention-resolutions", help="in pixels", rich_help_panel=ARCH)] = None,
    num_head_channels: Annotated[Optional[int], typer.Option("--num-head-channels", rich_help_panel=ARCH)] = None,
    pool: Annotated[Optional[PoolChoice], typer.Option("--pool", help="output head", rich_help_panel=ARCH)] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", rich_help_panel=ARCH)] = None,
    init: Init = None,
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="with --init: train only the head (out.*), keep the encoder's weights", rich_help_panel=OPT)] = False,
    random_crop: Annotated[Optional[bool], typer.Option("--random-crop/--no-random-crop", help="random resized crops (guided-diffusion's classifier augmentation)", rich_help_panel=OPT)] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="held out for validation accuracy", rich_help_panel=DATA)] = 0.05,
    batch_size: BatchSizeOpt = None,
    microbatch: Microbatch = None,
    lr: LR = None,
    weight_decay: WeightDecay = None,
    warmup_steps: Warmup = None,
    lr_schedule: LRSchedule = None,
    grad_clip: GradClip = None,
    ema: Ema = None,
    ema_warmup: EmaWarmup = None,
    precision: TrainPrecision = None,
    seed: TrainSeed = None,
    flip: Flip = None,
    image_size: ImageSizeOpt = None,
    channels: Channels = None,
    labels: Labels = LabelsChoice.auto,
    steps: Steps = None,
    minutes: Minutes = None,
    save_every: SaveEvery = 1000,
    save_minutes: SaveMinutes = 15.0,
    log_every: LogEvery = 50,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="validation every N steps (default: every log line)", rich_help_panel=RUN)] = None,
    keep: Keep = 3,
    resume: Resume = False,
    device: o.Device = None,
    compile: o.Compile = False,
    grad_checkpoint: GradCheckpoint = False,
    log_to: LogTo = None,
    wandb_project: WandbProject = None,
    quiet: o.Quiet = False,
) -> None:
    """Train the noise-aware classifier used for guidance (ADM Sec. 4)."""
    check_writable(out / "run.json")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    reporter = Reporter(quiet=quiet or not torchrun_env().is_main)
    if diffusion is not None:
        if schedule is not None or diffusion_steps is not None:
            raise UserError("--diffusion gives the schedule; drop --schedule/--diffusion-steps")
        loaded = load_model(diffusion, expect=("diffusion", "super-res"))
        diff_config = loaded.diffusion
        size_hint = loaded.config.image_size
    else:
        default = default_training_diffusion()
        diff_config = DiffusionConfig(
            steps=diffusion_steps or default.steps, schedule=schedule.value if schedule else default.schedule
        )
        size_hint = None
    classifier = {
        "model_channels": model_channels, "num_res_blocks": num_res_blocks,
        "channel_mult": _floats(channel_mult, "--channel-mult"),
        "attention_resolutions": _ints(attention_resolutions, "--attention-resolutions"),
        "num_head_channels": num_head_channels, "pool": pool.value if pool else None, "dropout": dropout,
    }
    train = _train_overrides(ctx.params)
    train.update(noised=not clean, random_crop=random_crop, freeze_encoder=freeze_encoder or None)
    if freeze_encoder and init is None:
        raise UserError("--freeze-encoder needs --init (a classifier to keep the encoder of)")
    source = load_init(init, kinds=("classifier",)) if init is not None else None
    if source is not None:
        init_size = source.loaded.config.image_size
        if size_hint is not None and size_hint != init_size:
            raise UserError(f"--init {source.loaded.path} classifies {init_size}x{init_size} images but the diffusion model makes {size_hint}x{size_hint}")
        if image_size is not None and image_size != init_size:
            raise UserError(f"--image-size {image_size} differs from the --init classifier's {init_size}x{init_size}")
        size_hint = init_size
        if source.loaded.diffusion is not None and diffusion is None and schedule is None and diffusion_steps is None:
            diff_config = source.loaded.diffusion  # the schedule the classifier was trained for

    def make_configs(data) -> dict[str, Any]:
        if size_hint is not None and data.image_size != size_hint:
            raise UserError(f"the data is {data.image_size}x{data.image_size} but the diffusion model makes {size_hint}x{size_hint}; pass --image-size {size_hint}")
        config, tconfig = build_classifier_configs(data, classifier=classifier, diffusion=diff_config, train=train)
        if source is not None:
            given = {**classifier, "image_size": image_size}
            config = classifier_config_from_init(source, data_classes=config.num_classes, given=given)
        return {"classifier": config.to_dict(), "diffusion": diff_config.to_dict(), "train": tconfig.to_dict()}

    _check_resume_flags(ctx, resume, out=out, kind="classifier", make_configs=make_configs, init=source)
    data_spec = DataSpec(data, image_size or size_hint, channels, labels.value) if data else None
    summary = run_training(
        "classifier", out, data_spec=data_spec, make_configs=make_configs,
        options=_run_options(steps, minutes, save_every, save_minutes, log_every, keep, eval_every=eval_every,
                             grad_checkpoint=grad_checkpoint, log_to=_log_to(log_to), wandb_project=wandb_project),
        device=device, compile=compile, reporter=reporter, resume=resume, command=o.command_line(ctx),
        val_fraction=val_fraction, explicit=_explicit(ctx), init=source,
    )
    _report(summary, out, reporter)
