"""TensorFlow 1's legacy bilinear resize, which the 2015 Inception graph applies to every input.

OpenAI's evaluator feeds uint8-valued float32 images into the graph of
``classify_image_graph_def.pb`` after its ``ExpandDims`` node; the graph then runs
``ResizeBilinear`` to 299×299 with ``align_corners=False`` and no half-pixel centres
(TF's ``compute_interpolation_weights`` with the legacy scaler,
tensorflow/core/kernels/image/resize_bilinear_op.cc).  For output index ``j`` on an axis
of input length ``n_in`` and output length ``n_out``::

    scale = float32(n_in / n_out)
    src   = float32(j) * scale
    lo    = floor(src);  hi = min(lo + 1, n_in - 1);  w = src - lo
    top    = TL + (TR - TL) * w_x
    bottom = BL + (BR - BL) * w_y ... out = top + (bottom - top) * w_y

No antialiasing: downscaling 512 → 299 samples two taps.  This is neither
``F.interpolate(..., align_corners=False)`` (half-pixel centres) nor PIL (antialiased).
"""

from __future__ import annotations

import torch

__all__ = ["tf1_resize_bilinear", "tf1_interpolation_weights"]


def tf1_interpolation_weights(n_in: int, n_out: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lo, hi, w)`` for one axis: source indices (int64) and the float32 weight of ``hi``."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)  # float32(in/out) as TF computes it
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lo_f = torch.floor(src)
    w = src - lo_f
    lo = lo_f.to(torch.int64).clamp(0, n_in - 1)
    hi = torch.clamp(lo + 1, max=n_in - 1)
    return lo.to(device), hi.to(device), w.to(device)


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``x`` (N, C, H, W) float32 to ``size = (H', W')`` exactly as TF1 ``resize_bilinear``.

    The same float32 operations as TF's kernel, in the same order: interpolate along the
    width (``top``/``bottom`` rows), then along the height.  ``size == (H, W)`` is the identity.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {tuple(x.shape)}")
    h_in, w_in = x.shape[-2:]
    h_out, w_out = size
    if (h_in, w_in) == (h_out, w_out):
        return x
    x = x.float()
    ylo, yhi, wy = tf1_interpolation_weights(h_in, h_out, x.device)
    xlo, xhi, wx = tf1_interpolation_weights(w_in, w_out, x.device)
    wx = wx.view(1, 1, 1, w_out)
    wy = wy.view(1, 1, h_out, 1)
    top_rows, bottom_rows = x[:, :, ylo, :], x[:, :, yhi, :]  # (N, C, H', W_in)
    top = top_rows[..., xlo] + (top_rows[..., xhi] - top_rows[..., xlo]) * wx  # (N, C, H', W')
    bottom = bottom_rows[..., xlo] + (bottom_rows[..., xhi] - bottom_rows[..., xlo]) * wx
    return top + (bottom - top) * wy
