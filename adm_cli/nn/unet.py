"""The ADM UNet and its super-resolution variant (Dhariwal & Nichol 2021, Sec. 3; guided-diffusion
`UNetModel` / `SuperResModel`), one parameterised implementation for every published configuration."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adm_cli.config import ClassifierConfig, UNetConfig
from adm_cli.nn.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
)


def time_embed(model_channels: int) -> nn.Sequential:
    dim = 4 * model_channels
    return nn.Sequential(nn.Linear(model_channels, dim), nn.SiLU(), nn.Linear(dim, dim))


def build_encoder(
    config: UNetConfig | ClassifierConfig, *, in_channels: int
) -> tuple[nn.ModuleList, TimestepEmbedSequential, list[int], int]:
    """The UNet's downsampling half and middle block, shared by the UNet and the classifier.

    Returns (input_blocks, middle_block, channels of each input block's output, downsampling factor).
    """
    c = config
    emb_dim = 4 * c.model_channels
    attn = dict(num_heads=c.num_heads, num_head_channels=c.num_head_channels, order=c.attention_order)
    res = dict(use_scale_shift_norm=c.use_scale_shift_norm)
    ch = int(c.channel_mult[0] * c.model_channels)
    blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    chans, ds = [ch], 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            out = int(mult * c.model_channels)
            layers: list[nn.Module] = [ResBlock(ch, emb_dim, c.dropout, out, **res)]
            ch = out
            if ds in c.attention_ds:
                layers.append(AttentionBlock(ch, **attn))
            blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(c.channel_mult) - 1:
            down = ResBlock(ch, emb_dim, c.dropout, ch, down=True, **res) if c.resblock_updown else Downsample(ch, True)
            blocks.append(TimestepEmbedSequential(down))
            chans.append(ch)
            ds *= 2
    middle = TimestepEmbedSequential(
        ResBlock(ch, emb_dim, c.dropout, **res),
        AttentionBlock(ch, **attn),
        ResBlock(ch, emb_dim, c.dropout, **res),
    )
    return blocks, middle, chans, ds


class UNet(nn.Module):
    """ε- (or x₀-) prediction UNet: x_t, t [, y] -> (B, C or 2C, H, W).

    With `learn_sigma` the second half of the output channels is the variance interpolation
    v of IDDPM Eq. 15.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.model_channels = c.model_channels
        emb_dim = 4 * c.model_channels
        self.time_embed = time_embed(c.model_channels)
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes + int(c.null_class), emb_dim)
        in_ch = c.in_channels * (2 if c.is_super_res else 1)  # super-res: x_t ‖ upsampled low-res
        self.input_blocks, self.middle_block, chans, ds = build_encoder(c, in_channels=in_ch)
        attn_up = dict(
            num_heads=c.num_heads_upsample or c.num_heads,
            num_head_channels=c.num_head_channels,
            order=c.attention_order,
        )
        res = dict(use_scale_shift_norm=c.use_scale_shift_norm)
        ch = chans[-1]
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                out = int(mult * c.model_channels)
                layers: list[nn.Module] = [ResBlock(ch + chans.pop(), emb_dim, c.dropout, out, **res)]
                ch = out
                if ds in c.attention_ds:
                    layers.append(AttentionBlock(ch, **attn_up))
                if level and i == c.num_res_blocks:
                    layers.append(
                        ResBlock(ch, emb_dim, c.dropout, ch, up=True, **res) if c.resblock_updown else Upsample(ch, True)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        first_ch = int(c.channel_mult[0] * c.model_channels)
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(first_ch, c.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.config.num_classes is not None:
            if y is None:
                raise ValueError("this model is class-conditional: pass y (class labels)")
            emb = emb + self.label_emb(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)  # (B, C + C_skip, H, W)
        return self.out(h.to(x.dtype))


class SuperResUNet(UNet):
    """UNet conditioned on a low-resolution image, bilinearly upsampled and concatenated to x_t
    (ADM Sec. 5 / guided-diffusion `SuperResModel`)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        upsampled = F.interpolate(low_res, x.shape[-2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled.to(x.dtype)], dim=1), t, y)  # (B, 2C, H, W) in


def build_unet(config: UNetConfig) -> UNet:
    return SuperResUNet(config) if config.is_super_res else UNet(config)
