"""Training-data readers: folders, npz, HDF5, IDX, conversions and holdout splits (adm_cli.data.datasets)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from adm_cli.data import DataError, center_crop_arr, open_dataset, read_idx, split_holdout, write_idx
from adm_cli.data.datasets import rgb_to_gray


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png(path: Path, size: tuple[int, int] = (8, 8), seed: int = 0, mode: str = "RGB") -> np.ndarray:
    """Write a random ``size`` = (w, h) image to ``path``; return its pixels (H, W, C)."""
    arr = _pixels(seed, (size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)
    return np.asarray(Image.open(path).convert("RGB"))


# ---- folders


def test_folder_with_class_subfolders(tmp_path):
    want = {
        "dog/b.png": _png(tmp_path / "dog" / "b.png", seed=1),
        "cat/a.png": _png(tmp_path / "cat" / "a.png", seed=2),
        "cat/deep/c.PNG": _png(tmp_path / "cat" / "deep" / "c.PNG", seed=3),
        "dog/d.bmp": _png(tmp_path / "dog" / "d.bmp", seed=4),
    }
    (tmp_path / "dog" / ".hidden.png").write_bytes(b"not an image")  # hidden: ignored
    (tmp_path / ".cache").mkdir()
    _png(tmp_path / ".cache" / "x.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image either")
    data = open_dataset(tmp_path)
    assert len(data) == 4 and (data.image_size, data.channels) == (8, 3)
    assert data.num_classes == 2 and data.class_names == ("cat", "dog")
    assert "4 images" in data.source and "2 classes" in data.source
    images, labels = data.get([0, 1, 2, 3])  # sorted paths: cat/a, cat/deep/c, dog/b, dog/d
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1]
    for got, name in zip(images, ["cat/a.png", "cat/deep/c.PNG", "dog/b.png", "dog/d.bmp"]):
        np.testing.assert_array_equal(got, want[name])
    images2, labels2 = data.get(np.array([3, 0, 3]))
    np.testing.assert_array_equal(images2, images[[3, 0, 3]])
    assert labels2.tolist() == [1, 0, 1]
    with pytest.raises(IndexError):
        data.get([4])


def test_folder_prefix_labels_as_guided_diffusion(tmp_path):
    for i, name in enumerate(["zebra_1.png", "ant_2.png", "ant_x_3.jpg", "zebra_.png"]):
        _png(tmp_path / name, seed=i)
    data = open_dataset(tmp_path)
    assert data.class_names == ("ant", "zebra") and data.num_classes == 2
    _, labels = data.get(range(4))  # sorted: ant_2, ant_x_3, zebra_.png, zebra_1
    assert labels.tolist() == [0, 0, 1, 1]
    assert data.get([0])[1] is not None
    assert open_dataset(tmp_path, labels="none").get([0])[1] is None
    with pytest.raises(DataError, match="sub-folder"):
        open_dataset(tmp_path, labels="folder")
    padded = open_dataset(tmp_path, num_classes=4)
    assert padded.num_classes == 4 and padded.class_names == ("ant", "zebra", "2", "3")
    with pytest.raises(DataError, match="out of range for 1 classes"):
        open_dataset(tmp_path, num_classes=1)


def test_unlabelled_folders(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c_1.png"]):  # not every name has a "_"
        _png(tmp_path / "flat" / name, seed=i)
    data = open_dataset(tmp_path / "flat")
    assert data.num_classes is None and data.class_names is None and "unlabelled" in data.source
    assert data.get([0, 2])[1] is None
    with pytest.raises(DataError, match=r"a\.png.*'_'"):
        open_dataset(tmp_path / "flat", labels="prefix")
    # One sub-folder or one shared prefix would be a single class: auto leaves those unlabelled.
    for i in range(2):
        _png(tmp_path / "one" / "images" / f"img_{i}.png", seed=i)
    assert open_dataset(tmp_path / "one").num_classes is None
    forced = open_dataset(tmp_path / "one", labels="folder")
    assert forced.num_classes == 1 and forced.class_names == ("images",)


def test_folder_mixed_sizes_error_and_resize(tmp_path):
    _png(tmp_path / "a.png", (32, 32), seed=1)
    _png(tmp_path / "b.png", (40, 30), seed=2)
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "mixed sizes (32x32 in a.png, 40x30 in b.png)" in msg and "--image-size" in msg
    data = open_dataset(tmp_path, image_size=16)
    images, _ = data.get([0, 1])
    assert images.shape == (2, 16, 16, 3)
    for got, name in zip(images, ["a.png", "b.png"]):
        with Image.open(tmp_path / name) as im:
            np.testing.assert_array_equal(got, center_crop_arr(im.convert("RGB"), 16))
    gray = open_dataset(tmp_path, image_size=16, channels=1)
    g, _ = gray.get([1])
    assert g.shape == (1, 16, 16, 1)
    with Image.open(tmp_path / "b.png") as im:
        np.testing.assert_array_equal(g[0, ..., 0], center_crop_arr(im.convert("L"), 16))


def test_folder_not_square(tmp_path):
    _png(tmp_path / "a.png", (12, 10))
    with pytest.raises(DataError, match="not square.*--image-size"):
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, image_size=10).get([0])[0].shape == (1, 10, 10, 3)


def test_folder_unreadable_and_empty(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match=r"bad\.png"):
        open_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images found in .*empty \(png, jpg"):
        open_dataset(tmp_path / "empty")


def test_folder_file_broken_after_open(tmp_path):
    _png(tmp_path / "a.png")
    data = open_dataset(tmp_path)
    (tmp_path / "a.png").write_bytes(b"gone")
    with pytest.raises(DataError, match=r"a\.png"):
        data.get([0])


# ---- npz and HDF5


def test_npz_nhwc_with_labels(tmp_path):
    images, labels = _pixels(0, (6, 8, 8, 3)), np.array([0, 2, 1, 2, 0, 1], np.int32)
    np.savez(tmp_path / "d.npz", images, labels)
    data = open_dataset(tmp_path / "d.npz")
    assert (len(data), data.image_size, data.channels, data.num_classes) == (6, 8, 3, 3)
    got, lab = data.get([5, 0])
    np.testing.assert_array_equal(got, images[[5, 0]])
    assert lab.dtype == np.int64 and lab.tolist() == [1, 0]


def test_npz_gray_unlabelled_and_channel_conversion(tmp_path):
    images = _pixels(1, (4, 8, 8))
    np.savez(tmp_path / "g.npz", arr_0=images)
    data = open_dataset(tmp_path / "g.npz")
    assert data.channels == 1 and data.num_classes is None
    got, lab = data.get(range(4))
    assert lab is None and got.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(got[..., 0], images)
    rgb, _ = open_dataset(tmp_path / "g.npz", channels=3).get(range(4))
    np.testing.assert_array_equal(rgb, np.repeat(images[..., None], 3, axis=3))

    colour = _pixels(2, (3, 8, 8, 3))
    np.savez(tmp_path / "c.npz", colour)
    gray, _ = open_dataset(tmp_path / "c.npz", channels=1).get(range(3))
    for g, c in zip(gray, colour):
        np.testing.assert_array_equal(g[..., 0], np.asarray(Image.fromarray(c).convert("L")))


def test_rgb_to_gray_matches_pil():
    colour = _pixels(3, (64, 64, 3))
    np.testing.assert_array_equal(rgb_to_gray(colour)[..., 0], np.asarray(Image.fromarray(colour).convert("L")))


def test_npz_resize_28_to_32(tmp_path):
    images = _pixels(4, (5, 28, 28, 1))
    np.savez(tmp_path / "m.npz", images, np.arange(5))
    data = open_dataset(tmp_path / "m.npz", image_size=32)
    assert (data.image_size, data.channels) == (32, 1) and "resized from 28x28" in data.source
    got, _ = data.get(range(5))
    assert got.shape == (5, 32, 32, 1)
    for g, src in zip(got, images):
        np.testing.assert_array_equal(g[..., 0], center_crop_arr(Image.fromarray(src[..., 0]), 32))


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "dtype float32"),
        ({"arr_0": np.zeros((2, 8), np.uint8)}, "shape"),
        ({"arr_0": np.zeros((2, 3, 8, 8), np.uint8)}, "NCHW"),
        ({"arr_0": np.zeros((0, 8, 8, 3), np.uint8)}, "no images"),
        ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(3, np.int64)}, "3 labels .* for 2 images"),
        ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.array([0.0, 1.0])}, "labels have dtype"),
        ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.array([0, -1])}, "negative label"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "no arr_0"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        open_dataset(tmp_path / "bad.npz")
    assert "\n" not in str(e.value)


def test_label_out_of_range(tmp_path):
    np.savez(tmp_path / "d.npz", _pixels(0, (2, 8, 8, 3)), np.array([3, 12]))
    with pytest.raises(DataError, match=r"label 12 out of range for 10 classes \(file .*d\.npz\)"):
        open_dataset(tmp_path / "d.npz", num_classes=10)
    assert open_dataset(tmp_path / "d.npz", num_classes=20).num_classes == 20
    assert open_dataset(tmp_path / "d.npz").num_classes == 13


@pytest.mark.parametrize("names", [("images", "labels"), ("arr_0", "arr_1")])
def test_h5_lazy(tmp_path, names):
    images, labels = _pixels(5, (10, 12, 12, 3)), np.arange(10) % 4
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f[names[0]] = images
        f[names[1]] = labels
    data = open_dataset(tmp_path / "d.h5")
    assert (len(data), data.image_size, data.channels, data.num_classes) == (10, 12, 3, 4)
    idx = [7, 2, 7, 0, 9]  # unsorted with a repeat
    got, lab = data.get(idx)
    np.testing.assert_array_equal(got, images[idx])
    assert lab.tolist() == labels[idx].tolist()
    small, _ = open_dataset(tmp_path / "d.h5", image_size=8, channels=1).get([3])
    assert small.shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(small[0, ..., 0], center_crop_arr(Image.fromarray(images[3]).convert("L"), 8))


def test_h5_errors(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f["pictures"] = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match=r"x\.hdf5: no 'images'"):
        open_dataset(tmp_path / "x.hdf5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["images"] = np.zeros((2, 8, 8, 3), np.uint8)
        f["labels"] = np.zeros(5, np.int64)
    with pytest.raises(DataError, match="5 labels"):
        open_dataset(tmp_path / "y.h5")
    (tmp_path / "z.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"z\.h5"):
        open_dataset(tmp_path / "z.h5")


# ---- IDX


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_idx_folder_splits(tmp_path, gz):
    train, test = _pixels(6, (7, 28, 28)), _pixels(7, (3, 28, 28))
    write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", train)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", np.array([0, 1, 2, 3, 4, 5, 9], np.uint8))
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{gz}", test)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{gz}", np.array([1, 1, 0], np.uint8))
    data = open_dataset(tmp_path)
    assert (len(data), data.image_size, data.channels, data.num_classes) == (7, 28, 1, 10)
    got, lab = data.get([6, 0])
    np.testing.assert_array_equal(got[..., 0], train[[6, 0]])
    assert lab.tolist() == [9, 0]
    t = open_dataset(tmp_path, split="test")
    assert len(t) == 3 and t.num_classes == 2
    np.testing.assert_array_equal(t.get([1])[0][0, ..., 0], test[1])
    resized = open_dataset(tmp_path, image_size=32, channels=3)
    assert (resized.image_size, resized.channels) == (32, 3)
    img = resized.get([2])[0][0]
    np.testing.assert_array_equal(img, center_crop_arr(Image.fromarray(train[2]).convert("RGB"), 32))


def test_idx_file_with_and_without_sibling_labels(tmp_path):
    images = _pixels(8, (4, 10, 10))
    path = write_idx(tmp_path / "x-images-idx3-ubyte", images)
    assert open_dataset(path).num_classes is None
    write_idx(tmp_path / "x-labels-idx1-ubyte.gz", np.array([2, 0, 1, 1], np.uint8))
    data = open_dataset(path)
    assert data.num_classes == 3 and data.get([0, 3])[1].tolist() == [2, 1]
    write_idx(tmp_path / "x-labels-idx1-ubyte.gz", np.array([2, 0, 1], np.uint8))
    with pytest.raises(DataError, match="3 labels for 4 images"):
        open_dataset(path)


def test_idx_round_trip_and_corruption(tmp_path):
    for arr in [_pixels(9, (3, 5, 4)), np.arange(-6, 6, dtype=np.int32).reshape(3, 4), np.linspace(0, 1, 5)]:
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", arr)), arr)
    good = write_idx(tmp_path / "a-images-idx3-ubyte", _pixels(9, (3, 5, 5)))
    raw = good.read_bytes()
    with pytest.raises(DataError, match="bad magic number 0x00000801"):
        read_idx(write_idx(tmp_path / "l", np.zeros(3, np.uint8)), magic=0x00000803)
    (tmp_path / "b-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x04" + raw[4:])
    with pytest.raises(DataError, match="bad magic number 0x00000804 .*0x00000803"):
        open_dataset(tmp_path / "b-images-idx3-ubyte")
    (tmp_path / "c-images-idx3-ubyte").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="corrupt or truncated"):
        open_dataset(tmp_path / "c-images-idx3-ubyte")
    (tmp_path / "d-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match=r"d-images-idx3-ubyte\.gz"):
        open_dataset(tmp_path / "d-images-idx3-ubyte.gz")


def test_idx_folder_missing_split(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", _pixels(0, (2, 4, 4)))
    with pytest.raises(DataError, match="no test split"):
        open_dataset(tmp_path, split="test")


# ---- specs and splits


def test_unknown_path_and_extension(tmp_path):
    with pytest.raises(DataError, match="data not found: .*nope"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported data file.*synthetic.*npz"):
        open_dataset(tmp_path / "x.csv")
    with pytest.raises(DataError, match="channels"):
        open_dataset("synthetic", channels=2)


def test_split_holdout(tmp_path):
    images = _pixels(10, (50, 8, 8, 3))
    np.savez(tmp_path / "d.npz", images, np.arange(50) % 5)
    data = open_dataset(tmp_path / "d.npz")
    train, val = split_holdout(data, 0.1, seed=3)
    assert (len(train), len(val)) == (45, 5)
    assert set(train.indices) | set(val.indices) == set(range(50))
    assert not set(train.indices) & set(val.indices)
    assert (val.image_size, val.channels, val.num_classes) == (8, 3, 5)
    got, lab = val.get([4, 0])
    np.testing.assert_array_equal(got, images[val.indices[[4, 0]]])
    assert lab.tolist() == (val.indices[[4, 0]] % 5).tolist()
    again, _ = split_holdout(data, 0.1, seed=3)
    np.testing.assert_array_equal(again.indices, train.indices)
    other, _ = split_holdout(data, 0.1, seed=4)
    assert not np.array_equal(other.indices, train.indices)
    assert len(split_holdout(data, 0.001)[1]) == 1
    with pytest.raises(ValueError):
        split_holdout(data, 1.0)
