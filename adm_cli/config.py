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
MeanType = Literal["epsilon", "x0"]
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


@dataclass(frozen=True)
class UNetConfig(_Serializable):
    """The ADM UNet (guided-diffusion `UNetModel` / `SuperResModel`).

    `low_res_size` set makes it the super-resolution model: the low-resolution image is
    upsampled bilinearly and concatenated to x_t, doubling the input channels.
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
        _check(self.attention_order in ("legacy", "new"), "attention_order must be 'legacy' or 'new'")
        down = 2 ** (len(self.channel_mult) - 1)
        _check(
            self.image_size % down == 0,
            f"image_size {self.image_size} is not divisible by 2^{len(self.channel_mult) - 1} "
            f"(channel_mult has {len(self.channel_mult)} levels)",
        )
        sizes = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        for res in self.attention_resolutions:
            _check(res in sizes, f"attention resolution {res} px is not one of the UNet's sizes {sorted(sizes)}")
        for mult in self.channel_mult:
            ch = int(mult * self.model_channels)
            _check(ch % 32 == 0, f"every level needs a multiple of 32 channels for GroupNorm(32); got {ch}")
            if self.num_head_channels is not None:
                _check(ch % self.num_head_channels == 0, f"{ch} channels do not split into heads of {self.num_head_channels}")
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
        sizes = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        for res in self.attention_resolutions:
            _check(res in sizes, f"attention resolution {res} px is not one of the encoder's sizes {sorted(sizes)}")

    @property
    def attention_ds(self) -> tuple[int, ...]:
        return tuple(self.image_size // r for r in self.attention_resolutions)



@dataclass(frozen=True)
class DiffusionConfig(_Serializable):
    """The Gaussian diffusion process a model was trained with (DDPM / IDDPM / ADM).

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
        _check(self.mean_type in ("epsilon", "x0"), f"unknown mean type {self.mean_type!r}")
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
