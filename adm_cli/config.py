"""Typed, frozen configurations and the paper's named presets.

Every config is a frozen dataclass of plain types, validated on construction, and
round-trips through `to_dict` / `from_dict` so it can live inside a checkpoint that
`torch.load(..., weights_only=True)` reads.

Units: `attention_resolutions` are always in pixels (guided-diffusion's command-line
convention, *not* its internal downsampling factors); `image_size` is the output side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Schedule = Literal["linear", "cosine"]
MeanType = Literal["epsilon", "x0", "v"]
VarType = Literal["fixed_small", "fixed_large", "learned_range", "learned"]
AttentionOrder = Literal["legacy", "new"]
Pool = Literal["adaptive", "attention", "spatial", "spatial_v2"]


class ConfigError(ValueError):
    """A configuration that cannot describe a valid model or run."""


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The channel multipliers guided-diffusion uses for each resolution (script_util.py).

    Sizes the reference does not cover get one level per halving down to 8x8 pixels
    (e.g. 32 -> (1, 2, 2), 28 -> (1, 2, 2), 16 -> (1, 2)), the common choice for small data.
    """
    table = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
    }
    if image_size in table:
        return tuple(float(m) for m in table[image_size])
    levels, size = 1, image_size
    while size % 2 == 0 and size > 8:
        size //= 2
        levels += 1
    return (1.0,) + (2.0,) * (levels - 1)


C = TypeVar("C", bound="_Serializable")


class _Serializable:
    """Plain-dict round trip (tuples become lists) for storage inside checkpoints."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_levels(config: UNetConfig | ClassifierConfig, network: str) -> None:
    """Check the attention resolutions and per-level channel counts shared by the UNet and
    the classifier's encoder; ``network`` names it in the messages ("UNet", "encoder")."""
    sizes = {config.image_size // 2**i for i in range(len(config.channel_mult))}
    for res in config.attention_resolutions:
        _check(res in sizes, f"attention resolution {res} px is not one of the {network}'s sizes {sorted(sizes)}")
    for mult in config.channel_mult:
        ch = int(mult * config.model_channels)
        _check(ch % 32 == 0, f"every level needs a multiple of 32 channels for GroupNorm(32); got {ch}")
        if config.num_head_channels is not None:
            heads = config.num_head_channels
            _check(ch % heads == 0, f"{ch} channels do not split into heads of {heads}")


@dataclass(frozen=True)
class UNetConfig(_Serializable):
    """The ADM UNet (guided-diffusion `UNetModel` / `SuperResModel`).

    `low_res_size` set makes it the super-resolution model: the low-resolution image is
    upsampled bilinearly and concatenated to x_t, doubling the input channels.
    `null_class` adds one label, index `num_classes`, meaning "no class": the unconditional
    branch of classifier-free guidance, learned by training with label dropout.
    """

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    channel_mult: tuple[float, ...] = ()
    dropout: float = 0.0
    num_classes: int | None = None
    learn_sigma: bool = False
    num_heads: int = 4
    num_head_channels: int | None = None
    num_heads_upsample: int | None = None
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    attention_order: AttentionOrder = "legacy"
    low_res_size: int | None = None
    null_class: bool = False

    def __post_init__(self) -> None:
        if not self.channel_mult:
            object.__setattr__(self, "channel_mult", default_channel_mult(self.image_size))
        object.__setattr__(self, "channel_mult", tuple(float(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        _check(self.image_size > 0, f"image_size must be positive, got {self.image_size}")
        _check(self.in_channels > 0, "in_channels must be positive")
        _check(self.model_channels > 0, "model_channels must be positive")
        _check(self.num_res_blocks > 0, "num_res_blocks must be positive")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.num_classes is None or self.num_classes > 0, "num_classes must be positive")
        _check(not self.null_class or self.num_classes is not None, "a null class needs num_classes")
        _check(self.attention_order in ("legacy", "new"), "attention_order must be 'legacy' or 'new'")
        down = 2 ** (len(self.channel_mult) - 1)
        _check(
            self.image_size % down == 0,
            f"image_size {self.image_size} is not divisible by 2^{len(self.channel_mult) - 1} "
            f"(channel_mult has {len(self.channel_mult)} levels)",
        )
        _check_levels(self, "UNet")
        if self.low_res_size is not None:
            _check(0 < self.low_res_size <= self.image_size, "low_res_size must be in (0, image_size]")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Attention resolutions as downsampling factors (guided-diffusion's internal unit)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    @property
    def is_super_res(self) -> bool:
        return self.low_res_size is not None



@dataclass(frozen=True)
class ClassifierConfig(_Serializable):
    """The noise-aware classifier: the UNet encoder plus a pooling head (guided-diffusion
    `EncoderUNetModel`; ADM Sec. 4)."""

    image_size: int
    in_channels: int = 3
    model_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = ()
    num_classes: int = 1000
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int | None = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    attention_order: AttentionOrder = "legacy"
    pool: Pool = "attention"

    def __post_init__(self) -> None:
        if not self.channel_mult:
            object.__setattr__(self, "channel_mult", default_channel_mult(self.image_size))
        object.__setattr__(self, "channel_mult", tuple(float(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        _check(self.pool in ("adaptive", "attention", "spatial", "spatial_v2"), f"unknown pool {self.pool!r}")
        _check(self.num_classes > 0, "num_classes must be positive")
        _check(
            self.pool != "attention" or self.num_head_channels is not None,
            "attention pooling needs num_head_channels",
        )
        down = 2 ** (len(self.channel_mult) - 1)
        _check(self.image_size % down == 0, f"image_size {self.image_size} is not divisible by {down}")
        _check_levels(self, "encoder")

    @property
    def attention_ds(self) -> tuple[int, ...]:
        return tuple(self.image_size // r for r in self.attention_resolutions)



@dataclass(frozen=True)
class DiffusionConfig(_Serializable):
    """The Gaussian diffusion process a model was trained with (DDPM / IDDPM / ADM).

    `mean_type` is what the network's first C output channels predict: "epsilon" (ε, DDPM),
    "x0" (x_0) or "v" (v = α_t ε − σ_t x_0 with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t); Salimans & Ho 2022).
    `rescale_timesteps` feeds the network t * 1000 / steps (improved-diffusion's option;
    every published guided-diffusion model has it off).
    """

    steps: int = 1000
    schedule: Schedule = "linear"
    mean_type: MeanType = "epsilon"
    var_type: VarType = "fixed_small"
    rescale_timesteps: bool = False

    def __post_init__(self) -> None:
        _check(self.steps > 0, f"diffusion steps must be positive, got {self.steps}")
        _check(self.schedule in ("linear", "cosine"), f"unknown noise schedule {self.schedule!r}")
        _check(self.mean_type in ("epsilon", "x0", "v"), f"unknown mean type {self.mean_type!r}")
        _check(
            self.var_type in ("fixed_small", "fixed_large", "learned_range", "learned"),
            f"unknown variance type {self.var_type!r}",
        )

    @property
    def learned_variance(self) -> bool:
        return self.var_type in ("learned_range", "learned")



@dataclass(frozen=True)
class ModelSpec:
    """A diffusion model as a checkpoint describes it: network + process."""

    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        _check(
            self.unet.learn_sigma == self.diffusion.learned_variance,
            f"learn_sigma={self.unet.learn_sigma} does not fit variance type {self.diffusion.var_type!r}",
        )


LRSchedule = Literal["constant", "linear", "cosine"]
TrainPrecision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig(_Serializable):
    """How a network is optimised (both `train-diffusion` and `train-classifier`).

    `batch_size` is the *global* batch: under torchrun each of the W processes takes
    batch_size / W images per step, split further into `microbatch`-sized pieces whose gradients
    accumulate (guided-diffusion's --batch_size is per process; ours is not).
    The learning rate rises linearly over `warmup_steps`, then stays constant or anneals
    (linearly, as guided-diffusion's --lr_anneal_steps, or by a half cosine) to 0 at `anneal_steps`.
    EMA rates are applied after every step; with `ema_warmup` the rate is min(rate, (1+n)/(10+n))
    at step n, so early EMA weights are usable (guided-diffusion has no warm-up: set it False
    to train exactly as it does).
    Diffusion-only: `loss`, `timestep_sampling`, `label_dropout`, and the objectives beyond ADM
    (all off by default, so that a run without them trains exactly as before):
      min_snr_gamma       γ of Min-SNR-γ: the MSE term weighted by min(SNR_t, γ)/SNR_t for ε,
                          min(SNR_t, γ) for x_0, min(SNR_t, γ)/(SNR_t + 1) for v (Hang et al. 2023)
      p2_gamma, p2_k      P2 weighting: the MSE term weighted by 1/(k + SNR_t)^γ (Choi et al. 2022)
      input_perturbation  γ of DDPM-IP: x_t from ε + γ ξ, the target still ε (Ning et al. 2023)
    Classifier-only: `noised`, `random_crop`, `freeze_encoder` (train only the head, `out.*`; for
    fine-tuning with --init).
    """

    batch_size: int = 64
    microbatch: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: LRSchedule = "constant"
    anneal_steps: int | None = None
    grad_clip: float | None = None
    ema_rates: tuple[float, ...] = (0.9999,)
    ema_warmup: bool = True
    precision: TrainPrecision = "fp32"
    seed: int = 0
    flip: bool = True
    loss: Literal["simple", "hybrid", "kl"] = "simple"
    timestep_sampling: Literal["uniform", "loss-second-moment"] = "uniform"
    label_dropout: float = 0.0
    min_snr_gamma: float | None = None
    p2_gamma: float = 0.0
    p2_k: float = 1.0
    input_perturbation: float = 0.0
    noised: bool = True
    random_crop: bool = False
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ema_rates", tuple(float(r) for r in self.ema_rates))
        _check(self.batch_size > 0, f"batch size must be positive, got {self.batch_size}")
        _check(self.microbatch is None or self.microbatch > 0, "microbatch must be positive")
        _check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "weight decay must be >= 0")
        _check(self.warmup_steps >= 0, "warm-up steps must be >= 0")
        _check(self.lr_schedule in ("constant", "linear", "cosine"), f"unknown LR schedule {self.lr_schedule!r}")
        _check(
            self.lr_schedule == "constant" or (self.anneal_steps or 0) > 0,
            f"LR schedule {self.lr_schedule!r} needs the number of steps to anneal over",
        )
        _check(self.grad_clip is None or self.grad_clip > 0, "gradient clipping norm must be positive")
        _check(len(self.ema_rates) > 0, "at least one EMA rate is needed")
        _check(all(0.0 <= r < 1.0 for r in self.ema_rates), f"EMA rates must be in [0, 1), got {self.ema_rates}")
        _check(len(set(self.ema_rates)) == len(self.ema_rates), "EMA rates must be distinct")
        _check(self.precision in ("fp32", "bf16", "fp16"), f"unknown precision {self.precision!r}")
        _check(self.seed >= 0, "seed must be >= 0")
        _check(self.loss in ("simple", "hybrid", "kl"), f"unknown loss {self.loss!r}")
        _check(
            self.timestep_sampling in ("uniform", "loss-second-moment"),
            f"unknown timestep sampling {self.timestep_sampling!r}",
        )
        _check(0.0 <= self.label_dropout < 1.0, f"label dropout must be in [0, 1), got {self.label_dropout}")
        _check(self.min_snr_gamma is None or self.min_snr_gamma > 0,
               f"Min-SNR γ must be positive, got {self.min_snr_gamma}")
        _check(self.p2_gamma >= 0, f"P2 γ must be >= 0, got {self.p2_gamma}")
        _check(self.p2_k >= 0, f"P2 k must be >= 0, got {self.p2_k}")
        _check(self.input_perturbation >= 0, f"input perturbation γ must be >= 0, got {self.input_perturbation}")
        _check(
            self.min_snr_gamma is None or self.p2_gamma == 0,
            "Min-SNR-γ and P2 weighting both weight the MSE term; choose one",
        )
        weighting = "Min-SNR-γ" if self.min_snr_gamma is not None else "P2" if self.p2_gamma > 0 else None
        _check(
            weighting is None or self.loss != "kl",
            f"{weighting} weighting acts on the MSE term, which the kl loss does not have; use --loss simple or hybrid",
        )


# --- The paper's published configurations (guided-diffusion README, "Download pre-trained models").
# Sampling-relevant fields only; dropout is a training setting and is recorded where the README gives it.
_ADM = dict(
    model_channels=256,
    num_res_blocks=2,
    attention_resolutions=(32, 16, 8),
    num_head_channels=64,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
)


def _spec(unet: dict[str, Any], schedule: Schedule = "linear") -> ModelSpec:
    return ModelSpec(
        unet=UNetConfig(**unet),
        diffusion=DiffusionConfig(steps=1000, schedule=schedule, var_type="learned_range"),
    )


DIFFUSION_PRESETS: dict[str, ModelSpec] = {
    "imagenet64": _spec(
        {
            **_ADM,
            "image_size": 64,
            "model_channels": 192,
            "num_res_blocks": 3,
            "num_classes": 1000,
            "dropout": 0.1,
            "attention_order": "new",
        },
        schedule="cosine",
    ),
    "imagenet128": _spec(
        {**_ADM, "image_size": 128, "num_classes": 1000, "num_heads": 4, "num_head_channels": None}
    ),
    "imagenet256": _spec({**_ADM, "image_size": 256, "num_classes": 1000}),
    "imagenet256-uncond": _spec({**_ADM, "image_size": 256}),
    "imagenet512": _spec({**_ADM, "image_size": 512, "num_classes": 1000}),
    "lsun": _spec({**_ADM, "image_size": 256, "dropout": 0.1}),
    "upsample64-256": _spec(
        {
            **_ADM,
            "image_size": 256,
            "model_channels": 192,
            "num_classes": 1000,
            "num_heads": 4,
            "num_head_channels": None,
            "low_res_size": 64,
        }
    ),
    "upsample128-512": _spec(
        {
            **_ADM,
            "image_size": 512,
            "model_channels": 192,
            "attention_resolutions": (32, 16),
            "channel_mult": (1, 1, 2, 2, 4, 4),
            "num_classes": 1000,
            "low_res_size": 128,
        }
    ),
}

CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    "imagenet64": ClassifierConfig(image_size=64, num_res_blocks=4),
    "imagenet128": ClassifierConfig(image_size=128),
    "imagenet256": ClassifierConfig(image_size=256),
    "imagenet512": ClassifierConfig(image_size=512),
}


# --- Training presets: the paper's configurations (architecture from DIFFUSION_PRESETS; batch and
# learning rate as we read ADM App. Table 11: 64x64 batch 2048 / lr 3e-4, the others 256 / 1e-4,
# hybrid loss, EMA 0.9999) and small ones that train on a CPU. Small presets scale with the
# image size: attention at every UNet resolution of 16 px and below ("tiny": the lowest only).
SMALL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "unet": dict(model_channels=32, num_res_blocks=1, num_head_channels=32, learn_sigma=True, resblock_updown=True),
        "diffusion": dict(steps=1000, schedule="cosine", var_type="learned_range"),
        "train": dict(batch_size=32, lr=3e-4, ema_rates=(0.999,), loss="hybrid"),
    },
    "small": {
        "unet": dict(model_channels=64, num_res_blocks=2, num_head_channels=32, learn_sigma=True, resblock_updown=True, dropout=0.1),
        "diffusion": dict(steps=1000, schedule="cosine", var_type="learned_range"),
        "train": dict(batch_size=64, lr=2e-4, ema_rates=(0.9999, 0.999), loss="hybrid"),
    },
}
PAPER_TRAIN = {
    "imagenet64": dict(batch_size=2048, lr=3e-4),
    "imagenet128": dict(batch_size=256, lr=1e-4),
    "imagenet256": dict(batch_size=256, lr=1e-4),
    "imagenet256-uncond": dict(batch_size=256, lr=1e-4),
    "imagenet512": dict(batch_size=256, lr=1e-4),
    "lsun": dict(batch_size=256, lr=1e-4),
    "upsample64-256": dict(batch_size=256, lr=1e-4),
    "upsample128-512": dict(batch_size=256, lr=1e-4),
}
TRAIN_PRESETS = tuple(SMALL_PRESETS) + tuple(DIFFUSION_PRESETS)
DEFAULT_TRAIN_PRESET = "small"


def default_training_diffusion() -> DiffusionConfig:
    """The noise process `adm train-diffusion` uses without options (its default preset's), which
    `adm train-classifier` also uses without --diffusion, so that the two match by default."""
    return DiffusionConfig(**SMALL_PRESETS[DEFAULT_TRAIN_PRESET]["diffusion"])


def small_attention(image_size: int, channel_mult: tuple[float, ...], *, lowest_only: bool) -> tuple[int, ...]:
    sizes = [image_size // 2**i for i in range(len(channel_mult))]
    chosen = [s for s in sizes if s <= 16] or [sizes[-1]]
    return (chosen[-1],) if lowest_only else tuple(chosen)


def preset_settings(name: str, image_size: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(unet, diffusion, train) keyword dicts of a training preset for images of `image_size`.

    Paper presets keep their attention levels as downsampling factors when the size differs.
    """
    if name in SMALL_PRESETS:
        p = SMALL_PRESETS[name]
        unet = dict(p["unet"], image_size=image_size)
        mult = default_channel_mult(image_size)
        unet["attention_resolutions"] = small_attention(image_size, mult, lowest_only=name == "tiny")
        return unet, dict(p["diffusion"]), dict(p["train"])
    if name in DIFFUSION_PRESETS:
        spec = DIFFUSION_PRESETS[name]
        unet = spec.unet.to_dict()
        if image_size != spec.unet.image_size:
            unet["attention_resolutions"] = [image_size // ds for ds in spec.unet.attention_ds]
            unet["image_size"] = image_size
        train = dict(PAPER_TRAIN[name], ema_rates=(0.9999,), loss="hybrid")
        return unet, spec.diffusion.to_dict(), train
    raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(TRAIN_PRESETS)})")
