"""Building blocks of the ADM UNet (Dhariwal & Nichol 2021, Sec. 3; guided-diffusion `unet.py`).

Module and parameter names follow guided-diffusion exactly (`in_layers`, `emb_layers`,
`out_layers`, `skip_connection`, `qkv`, `proj_out`, ...), so its state dicts load with
`strict=True`. The computation is the same; attention goes through
`scaled_dot_product_attention`, which fuses softmax(qᵀk/√d)v.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

GROUPS = 32


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the input dtype (guided-diffusion `GroupNorm32`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
                # The CPU kernel takes bf16 input with float32 weights and accumulates in float32:
                # same result as the float32 round trip, without two extra passes over x.
                return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos | sin] halves.

    emb_i = cos(t·ω_i) ‖ sin(t·ω_i), ω_i = max_period^(-i/half)  (Transformer positional encoding,
    as used by DDPM; guided-diffusion `timestep_embedding`).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep (+ class) embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands `emb` to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then an optional 3×3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Strided 3×3 conv, or 2×2 average pooling when `use_conv` is off."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            assert channels == out_channels
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning; optionally BigGAN-style up/down-sampling
    inside the residual path (ADM Sec. 3) and AdaGN, GroupNorm(h)·(1 + s) + b with (s, b) from
    the embedding (`use_scale_shift_norm`, ADM Sec. 3, "adaptive group normalization")."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        *,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    grad_checkpoint = False  # `set_grad_checkpointing`: recompute activations in backward

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # Resample between the norm/activation and the conv, on both paths.
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B, C', 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: torch.Tensor, num_heads: int, *, order: str) -> torch.Tensor:
    """Multi-head self-attention softmax(q·kᵀ/√d)·v over a packed (B, 3·H·d, T) tensor.

    `order="legacy"` splits heads first and then q/k/v (guided-diffusion `QKVAttentionLegacy`);
    `order="new"` splits q/k/v first and then heads (`QKVAttention`). Returns (B, H·d, T).
    """
    bs, width, length = qkv.shape
    ch = width // (3 * num_heads)
    # Contiguous (B, H, T, d) q, k, v: SDPA's fused kernels (CPU flash attention) need a unit
    # stride on the last dim; transposed views fall back to the slower math path.
    if order == "legacy":
        qkv = qkv.reshape(bs, num_heads, 3, ch, length).permute(2, 0, 1, 4, 3)  # (3, B, H, T, d)
    else:
        qkv = qkv.reshape(bs, 3, num_heads, ch, length).permute(1, 0, 2, 4, 3)  # (3, B, H, T, d)
    q, k, v = qkv.contiguous().unbind(0)
    a = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, d)
    return a.transpose(-1, -2).reshape(bs, num_heads * ch, length)  # (B, H·d, T)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (ADM's multi-resolution attention)."""

    def __init__(self, channels: int, *, num_heads: int = 1, num_head_channels: int | None = None, order: str = "legacy"):
        super().__init__()
        if num_head_channels is None:
            self.num_heads = num_heads
        else:
            assert channels % num_head_channels == 0, f"{channels} channels, heads of {num_head_channels}"
            self.num_heads = channels // num_head_channels
        self.order = order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    grad_checkpoint = False  # `set_grad_checkpointing`: recompute activations in backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, T)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, order=self.order)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions (+ learned
    positional embedding); returns the projected mean token (guided-diffusion `AttentionPool2d`)."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)  # (B, C, HW)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # (B, C, HW+1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = qkv_attention(self.qkv_proj(x), self.num_heads, order="new")
        return self.c_proj(x)[:, :, 0]  # (B, out)


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Gradient checkpointing (guided-diffusion's ``use_checkpoint``): every `ResBlock` and
    `AttentionBlock` of ``model`` keeps only its inputs during a training forward and recomputes
    its activations in backward (``torch.utils.checkpoint``, non-reentrant, RNG state restored
    so dropout draws the same masks). Losses and gradients are unchanged; peak memory falls,
    at the cost of about one more forward. No effect under ``torch.no_grad``. Returns the number
    of blocks set."""
    blocks = [m for m in model.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    for block in blocks:
        block.grad_checkpoint = enabled
    return len(blocks)
