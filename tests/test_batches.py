"""Batch order, loading and preprocessing (adm_cli.data.batches)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from adm_cli.data import BatchLoader, SyntheticShapes, batch_indices, random_flip, random_resized_crop, to_model_input
from adm_cli.data.datasets import ArrayData


def test_each_epoch_is_a_permutation():
    n, b = 12, 4
    order = np.concatenate([batch_indices(n, b, step, seed=0) for step in range(9)])  # 3 epochs
    for epoch in range(3):
        assert sorted(order[epoch * n : (epoch + 1) * n].tolist()) == list(range(n))
    assert not np.array_equal(order[:n], order[n : 2 * n])
    np.testing.assert_array_equal(order[:n], np.random.default_rng([0, 0]).permutation(n))


def test_batches_straddle_epochs_and_larger_than_n():
    n = 10
    e0, e1, e2 = (np.random.default_rng([5, e]).permutation(n) for e in range(3))
    np.testing.assert_array_equal(batch_indices(n, 4, 2, seed=5), np.concatenate([e0[8:], e1[:2]]))
    np.testing.assert_array_equal(batch_indices(n, 25, 0, seed=5), np.concatenate([e0, e1, e2[:5]]))
    got = batch_indices(n, 4, 7, seed=5)
    assert got.dtype == np.int64 and got.shape == (4,)


def test_batch_indices_is_a_pure_function():
    first = [batch_indices(1000, 64, s, seed=3) for s in range(40)]
    again = [batch_indices(1000, 64, s, seed=3) for s in reversed(range(40))][::-1]  # other call order
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batch_indices(1000, 64, 0, seed=4), first[0])
    with pytest.raises(ValueError):
        batch_indices(0, 4, 0, seed=0)


def test_rank_slices_concatenate_to_global_batch():
    data = ArrayData(np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1), np.arange(30), source="t", num_classes=30)
    loaders = [BatchLoader(data, 6, seed=1, rank=r, world_size=3, start_step=4) for r in range(3)]
    with loaders[0], loaders[1], loaders[2]:
        for _ in range(3):
            parts = [next(loader) for loader in loaders]
            step = parts[0][0]
            assert {p[0] for p in parts} == {step}
            labels = np.concatenate([p[2] for p in parts])
            np.testing.assert_array_equal(labels, batch_indices(30, 6, step, seed=1))
            assert all(p[1].shape == (2, 1, 1, 1) for p in parts)
    with pytest.raises(ValueError, match="divisible"):
        BatchLoader(data, 7, seed=0, world_size=2)


def test_loader_matches_direct_get_and_resumes():
    data = SyntheticShapes(50, image_size=8, seed=2)
    with BatchLoader(data, 8, seed=9, prefetch=3, workers=2) as loader:
        run = [next(loader) for _ in range(10)]
    assert [s for s, _, _ in run] == list(range(10))
    for step, images, labels in run:
        want_images, want_labels = data.get(batch_indices(50, 8, step, seed=9))
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    with BatchLoader(data, 8, seed=9, start_step=6, prefetch=0, workers=1) as resumed:
        for want in run[6:]:
            step, images, labels = next(resumed)
            assert step == want[0]
            np.testing.assert_array_equal(images, want[1])


def test_loader_close_stops_threads():
    before = threading.active_count()
    loader = BatchLoader(SyntheticShapes(20, image_size=8), 4, seed=0, workers=2)
    next(loader)
    loader.close()
    assert threading.active_count() <= before
    with pytest.raises(StopIteration):
        next(loader)


def test_to_model_input():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 127, 255)
    x = to_model_input(images)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 5, 4)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 127 / 127.5 - 1, 1.0])
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), images.astype(np.float32) / 127.5 - 1)


def test_random_flip():
    x = torch.randn(64, 3, 4, 5)
    a = random_flip(x, torch.Generator().manual_seed(0))
    b = random_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    flipped = torch.tensor([torch.equal(a[i], x[i].flip(2)) for i in range(64)])
    kept = torch.tensor([torch.equal(a[i], x[i]) for i in range(64)])
    assert bool((flipped | kept).all()) and 16 < int(flipped.sum()) < 48
    assert not torch.equal(random_flip(x, torch.Generator().manual_seed(1)), a)


def test_random_resized_crop():
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    a = random_resized_crop(x, torch.Generator().manual_seed(0))
    b = random_resized_crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, random_resized_crop(x, torch.Generator().manual_seed(1)))
    assert torch.allclose(random_resized_crop(x, torch.Generator(), min_crop_frac=1.0), x, atol=1e-6)
    smooth = torch.linspace(-1, 1, 16).expand(4, 1, 16, 16).contiguous()  # horizontal ramp
    zoomed = random_resized_crop(smooth, torch.Generator().manual_seed(0), min_crop_frac=0.5)
    slope = (zoomed[..., 1:] - zoomed[..., :-1]).mean(dim=(1, 2, 3))
    assert ((slope > 0.06) & (slope <= 2 / 15 + 1e-4)).all()  # still a ramp, never steeper than the input
    with pytest.raises(ValueError):
        random_resized_crop(x, torch.Generator(), min_crop_frac=0.0)
