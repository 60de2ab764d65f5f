"""Image helpers: uint8 conversion, grids, ADM preprocessing (adm_cli.data.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm_cli.data import load_image, save_grid, to_uint8
from tests.sample_helpers import H, W


def test_to_uint8_matches_guided_diffusion():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 2.0]).reshape(1, 2, 2, 2)
    got = to_uint8(x)
    assert got.shape == (1, 2, 2, 2) and got.dtype == np.uint8
    ref = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, ref)
    flat = to_uint8(torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).reshape(1, 1, 1, 6)).ravel().tolist()
    assert flat == [0, 0, 127, 254, 255, 255]  # truncation, not rounding; clamped
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(3, 4, 4))


@pytest.mark.parametrize("n,nrow,c,expect", [(10, None, 3, (3, 4)), (10, 5, 1, (2, 5)), (3, 8, 3, (1, 3))])
def test_save_grid_size(tmp_path, n, nrow, c, expect):
    rows, cols = expect
    images = np.full((n, H, W, c), 200, np.uint8)
    out = save_grid(images, tmp_path / "g" / "grid.png", nrow=nrow)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (cols * (W + 2) + 2, rows * (H + 2) + 2)
        arr = np.asarray(im)
    assert arr[0, 0].max() == 0 and arr[2, 2].min() == 200  # padding / first tile
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["grid.png"]


GOLDEN_CROP = np.load(Path(__file__).parent.parent / "assets" / "golden" / "images" / "center_crop.npz")


def _ref_center_crop_arr(pil_image, image_size):
    """guided-diffusion's center_crop_arr output for this test image (assets/golden/images)."""
    assert image_size == 16
    return GOLDEN_CROP[f"out_{pil_image.width}x{pil_image.height}"]


@pytest.mark.parametrize("wh", [(100, 70), (33, 64), (16, 16), (300, 200)])
def test_load_image(tmp_path, wh):
    arr = GOLDEN_CROP[f"in_{wh[0]}x{wh[1]}"]
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    x = load_image(p, 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    ref = _ref_center_crop_arr(Image.fromarray(arr), 16).astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(x, ref.transpose(2, 0, 1))
    g = load_image(p, 8, channels=1)
    assert g.shape == (1, 8, 8)
