"""The noise-aware classifier p_φ(y | x_t, t): the UNet's encoder half plus a pooling head
(ADM Sec. 4; guided-diffusion `EncoderUNetModel`)."""

from __future__ import annotations

import torch
from torch import nn

from adm_cli.config import ClassifierConfig
from adm_cli.nn.layers import AttentionPool2d, GroupNorm32, normalization, timestep_embedding
from adm_cli.nn.unet import build_encoder, time_embed


class NoisyClassifier(nn.Module):
    """x_t, t -> class logits (B, num_classes).

    Pooling heads: "attention" (the paper's choice), "adaptive" (global average), "spatial" and
    "spatial_v2" (an MLP over the mean of every block's output, concatenated).
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        c = config
        self.config = config
        self.model_channels = c.model_channels
        self.time_embed = time_embed(c.model_channels)
        self.input_blocks, self.middle_block, chans, ds = build_encoder(c, in_channels=c.in_channels)
        ch = chans[-1]
        feature_size = sum(chans) + ch  # every input block, then the middle block
        if c.pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, c.num_classes, 1), nn.Flatten()
            )
            nn.init.zeros_(self.out[3].weight)
            nn.init.zeros_(self.out[3].bias)
        elif c.pool == "attention":
            assert c.num_head_channels is not None
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(c.image_size // ds, ch, c.num_head_channels, c.num_classes),
            )
        elif c.pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, c.num_classes))
        else:  # spatial_v2
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), GroupNorm32(32, 2048), nn.SiLU(), nn.Linear(2048, c.num_classes)
            )

    def _encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last feature map, and every block's spatial mean when the head is a spatial one."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        spatial = self.config.pool.startswith("spatial")
        means, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=(2, 3)))
        return h.to(x.dtype), means

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The representation the head reads, pooled to one vector per image (B, D).

        Attention/adaptive heads: the spatial mean of the normalised, activated last feature map
        (D = the encoder's last width); spatial heads: the concatenated block means they take.
        Used as a domain feature space for FID / precision / recall (`adm evaluate --features`).
        """
        h, means = self._encode(x, t)
        if means:
            return torch.cat(means, dim=-1)  # (B, sum of block channels)
        return self.out[1](self.out[0](h)).mean(dim=(2, 3))  # (B, C)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, means = self._encode(x, t)
        if means:
            return self.out(torch.cat(means, dim=-1))  # (B, sum of block channels)
        return self.out(h)
