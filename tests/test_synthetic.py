"""The built-in synthetic shapes (adm_cli.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adm_cli.data import DataError, SyntheticShapes, open_dataset
from adm_cli.data.datasets import rgb_to_gray
from adm_cli.data.synthetic import CLASS_NAMES, hash_uniforms, render_shapes


def test_same_seed_and_index_same_pixels_in_any_batch():
    data = SyntheticShapes(100, seed=7)
    all_images, all_labels = data.get(np.arange(100))
    some, labels = data.get([42, 3, 42, 99])
    np.testing.assert_array_equal(some, all_images[[42, 3, 42, 99]])
    np.testing.assert_array_equal(labels, all_labels[[42, 3, 42, 99]])
    np.testing.assert_array_equal(SyntheticShapes(5000, seed=7).get([42])[0], all_images[[42]])
    other, _ = SyntheticShapes(100, seed=8).get(np.arange(100))
    assert (other != all_images).mean() > 0.5


def test_hash_uniforms_range_and_independence():
    u = hash_uniforms(0, np.arange(20000), 3)
    assert u.shape == (20000, 3) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    np.testing.assert_array_equal(hash_uniforms(0, np.array([5, 6]), 3), u[5:7])


def test_class_balance_and_names():
    data = open_dataset("synthetic:80")
    assert len(data) == 80 and data.num_classes == 8 and data.class_names == CLASS_NAMES
    assert (data.image_size, data.channels) == (32, 3)
    _, labels = data.get(np.arange(80))
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [10] * 8
    assert open_dataset("synthetic").__len__() == 20000
    assert open_dataset("synthetic:3").num_classes == 3  # labels 0..2 only
    assert open_dataset("synthetic:16", labels="none").get([0])[1] is None


def test_classes_differ_for_the_same_draw():
    """The same position, size, rotation and colours drawn as each of the 8 shapes."""
    params = np.tile(hash_uniforms(1, np.array([0]), 14), (8, 1))
    params[:, 0], params[:, 1:3], params[:, 4:7] = 0.8, 0.5, (0.0, 1.0, 1.0)  # big, centred, bright red
    images = render_shapes(np.arange(8), params, 32).astype(np.int16)
    coverage = (images[..., 0] - images[..., 1]).clip(0) / 255  # red minus green ~ the shape's mask
    areas = coverage.reshape(8, -1).sum(1)
    assert (areas > 40).all()  # every shape is drawn
    for i in range(8):
        for j in range(i):
            assert np.abs(coverage[i] - coverage[j]).sum() > 20, (CLASS_NAMES[i], CLASS_NAMES[j])


def test_shapes_are_bright_on_darker_background():
    images, _ = SyntheticShapes(64).get(np.arange(64))
    value = images.max(axis=3)  # HSV value
    corners = np.concatenate([value[:, 0, 0], value[:, -1, -1]])
    assert np.median(corners) < 110 and np.percentile(value.reshape(64, -1).max(1), 10) > 180


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_any_resolution(size):
    images, _ = SyntheticShapes(16, image_size=size).get(np.arange(16))
    assert images.shape == (16, size, size, 3) and images.dtype == np.uint8
    assert (images.reshape(16, -1).std(1) > 5).all()


def test_resolutions_draw_the_same_scene():
    big, _ = SyntheticShapes(8, image_size=64).get(np.arange(8))
    small, _ = SyntheticShapes(8, image_size=32).get(np.arange(8))
    down = np.stack([np.asarray(Image.fromarray(b).resize((32, 32), Image.BOX)) for b in big])
    assert np.abs(down.astype(int) - small).mean() < 4


def test_grayscale_and_errors():
    rgb, _ = SyntheticShapes(4).get(np.arange(4))
    gray, _ = open_dataset("synthetic:4", channels=1).get(np.arange(4))
    np.testing.assert_array_equal(gray, rgb_to_gray(rgb))
    with pytest.raises(DataError, match="image size >= 8"):
        open_dataset("synthetic", image_size=4)
    with pytest.raises(DataError, match="synthetic:N"):
        open_dataset("synthetic:lots")
    with pytest.raises(DataError, match="at least one"):
        open_dataset("synthetic:0")
    with pytest.raises(DataError, match="label 7 out of range for 5 classes"):
        open_dataset("synthetic", num_classes=5)
    with pytest.raises(DataError, match="image folders only"):
        open_dataset("synthetic", labels="folder")
