"""Sample-file readers: npz (streamed), h5, image folders (adm_cli.data.sample_reader)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from adm_cli.data import SampleFileError, iter_sample_batches, read_samples, sample_info
from tests.sample_helpers import FORMATS, make_data, open_w, write_blocks


@pytest.mark.parametrize("fmt", FORMATS + ["npz_compressed", "folder"])
@pytest.mark.parametrize("bs", [1, 4, 100])
def test_iter_batches_equals_read(tmp_path, fmt, bs):
    images, labels = make_data()
    if fmt == "npz_compressed":
        out = tmp_path / "c.npz"
        np.savez_compressed(out, images, labels)
    elif fmt == "folder":
        out = tmp_path / "imgs"
        out.mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(out / f"{i:05d}.png")
        (out / "notes.txt").write_text("ignored")
        labels = None
    else:
        out = tmp_path / f"s.{fmt}"
        with open_w(out) as w:
            write_blocks(w, images, labels)
    full_i, full_l = read_samples(out)
    np.testing.assert_array_equal(full_i, images)
    batches = list(iter_sample_batches(out, bs))
    assert all(len(b[0]) <= bs for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), full_i)
    if labels is None:
        assert full_l is None and all(b[1] is None for b in batches)
    else:
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), full_l)
    assert batches[0][0].flags.writeable


def test_reader_errors(tmp_path):
    images, labels = make_data()
    p = tmp_path / "nolabel0.npz"
    np.savez(p, arr_1=labels)
    with pytest.raises(SampleFileError, match="no arr_0"):
        read_samples(p)
    p = tmp_path / "float.npz"
    np.savez(p, images.astype(np.float32))
    with pytest.raises(SampleFileError, match="dtype float32"):
        read_samples(p)
    p = tmp_path / "nchw.npz"
    np.savez(p, np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with pytest.raises(SampleFileError, match="NCHW"):
        read_samples(p)
    p = tmp_path / "3d.npz"
    np.savez(p, images[0])
    with pytest.raises(SampleFileError, match="4-D"):
        list(iter_sample_batches(p, 4))
    p = tmp_path / "badlab.npz"
    np.savez(p, images, labels[:3])
    with pytest.raises(SampleFileError, match="labels"):
        read_samples(p)
    with pytest.raises(SampleFileError, match="no such file"):
        read_samples(tmp_path / "missing.npz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SampleFileError, match="unsupported"):
        read_samples(tmp_path / "x.txt")

    good = tmp_path / "good.npz"
    np.savez(good, images, labels)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])  # central directory lost
    for fn in (read_samples, lambda q: list(iter_sample_batches(q, 4)), sample_info):
        with pytest.raises(SampleFileError, match="corrupt or truncated"):
            fn(trunc)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(SampleFileError, match="corrupt or truncated"):
        read_samples(tmp_path / "junk.h5")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SampleFileError, match="no .png"):
        read_samples(empty)


def test_streaming_detects_truncated_member(tmp_path):
    """A stored arr_0 whose data is shorter than its header says (consistent zip)."""
    images, labels = make_data()
    p = tmp_path / "short.npz"
    buf = tmp_path / "a.npy"
    np.save(buf, images)
    raw = buf.read_bytes()
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("arr_0.npy", raw[:-100])
    with pytest.raises(SampleFileError, match="truncated"):
        read_samples(p)
    with pytest.raises(SampleFileError, match="truncated"):
        list(iter_sample_batches(p, 4))


def test_read_labels_reads_no_images(tmp_path, monkeypatch):
    import h5py

    import adm_cli.data.sample_reader as reader

    images, labels = make_data()
    np.savez(tmp_path / "a.npz", arr_0=images, arr_1=labels)
    np.savez(tmp_path / "b.npz", arr_0=images)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["images"], f["labels"] = images, labels
    monkeypatch.setattr(reader, "_read_exact", lambda *a: pytest.fail("images were read"))
    assert np.array_equal(reader.read_labels(tmp_path / "a.npz"), labels)
    assert reader.read_labels(tmp_path / "b.npz") is None
    assert np.array_equal(reader.read_labels(tmp_path / "c.h5"), labels)
