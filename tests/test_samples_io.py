"""Streamed, atomic, resumable sample writers (adm_cli.data.sample_writer*)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from adm_cli.data import SampleFileError, read_samples, sample_info
from tests.sample_helpers import (
    BLOCK,
    FORMATS,
    META,
    REPO,
    TOTAL,
    C,
    H,
    W,
    evaluator_stream,
    make_data,
    open_w,
    write_blocks,
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip(tmp_path, fmt):
    images, labels = make_data()
    out = tmp_path / f"s.{fmt}"
    with open_w(out) as w:
        assert w.done == 0
        write_blocks(w, images, labels)
    # finalized on clean exit, work area gone
    assert out.exists()
    assert not list(tmp_path.glob("*.partial*")) and not list(tmp_path.glob("*.tmp"))
    got_i, got_l = read_samples(out)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)
    assert got_i.dtype == np.uint8 and got_l.dtype == np.int64
    assert sample_info(out) == (TOTAL, (H, W, C), True)


def test_npz_matches_np_load_and_evaluator(tmp_path):
    images, labels = make_data()
    out = tmp_path / "s.npz"
    w = open_w(out)
    write_blocks(w, images, labels)
    w.finalize()
    with np.load(out) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(z["arr_0"], images)
        np.testing.assert_array_equal(z["arr_1"], labels)
        assert z["arr_0"].flags["C_CONTIGUOUS"]
    arr, shape, dtype = evaluator_stream(out)
    assert shape == (TOTAL, H, W, C) and dtype == np.uint8
    np.testing.assert_array_equal(arr, images)
    with zipfile.ZipFile(out) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.testzip() is None  # CRCs are right
    # identical bytes to numpy's own arrays (header + data)
    ref = tmp_path / "ref.npz"
    np.savez(ref, images, labels)
    with zipfile.ZipFile(out) as a, zipfile.ZipFile(ref) as b:
        assert a.read("arr_0.npy") == b.read("arr_0.npy")
        assert a.read("arr_1.npy") == b.read("arr_1.npy")
    # read_samples gives a memmap into the zip
    got, _ = read_samples(out)
    assert isinstance(got, np.memmap)


def test_h5_layout_and_attrs(tmp_path):
    import h5py

    images, labels = make_data()
    out = tmp_path / "s.h5"
    with open_w(out) as w:
        write_blocks(w, images, labels)
    with h5py.File(out, "r") as f:
        assert f["images"].chunks is not None and f["images"].maxshape[0] is None
        assert f["images"].dtype == np.uint8 and f["labels"].dtype == np.int64
        assert f.attrs["command"] == META["command"]
        assert f.attrs["config"] == '{"a": 1}'
        assert list(f.attrs["seeds"]) == [0, 1]
        assert f.attrs["fingerprint"] == META["fingerprint"]
        assert int(f.attrs["done"]) == TOTAL and bool(f.attrs["complete"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_drop_equals_uninterrupted(tmp_path, fmt):
    images, labels = make_data()
    ref = tmp_path / f"ref.{fmt}"
    with open_w(ref) as w:
        write_blocks(w, images, labels)

    out = tmp_path / f"s.{fmt}"
    w = open_w(out)
    write_blocks(w, images, labels, upto=12)  # 3 blocks: 5 + 5 + 2
    assert w.done == 12
    w.close()  # dropped without finalize
    assert not out.exists()
    with pytest.raises(SampleFileError):
        w.write(images[12:13], labels[12:13], start=12)

    w = open_w(out)
    assert w.done == 12
    with pytest.raises(SampleFileError, match="contiguous"):
        w.write(images[0:5], labels[0:5], start=0)  # duplicate block refused
    with pytest.raises(SampleFileError, match="contiguous"):
        w.write(images[13:15], labels[13:15], start=13)  # gap refused
    write_blocks(w, images, labels)
    w.finalize()
    a_i, a_l = read_samples(out)
    b_i, b_l = read_samples(ref)
    np.testing.assert_array_equal(a_i, b_i)
    np.testing.assert_array_equal(a_l, b_l)
    if fmt == "npz":
        assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_real_kill(tmp_path, fmt):
    """A child process writes 3 blocks and dies with os._exit (no close, no finalize)."""
    images, labels = make_data()
    np.save(tmp_path / "img.npy", images)
    np.save(tmp_path / "lab.npy", labels)
    out = tmp_path / f"s.{fmt}"
    code = textwrap.dedent(
        f"""
        import os, sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from adm_cli.data.samples import open_sample_writer
        im = np.load({str(tmp_path / 'img.npy')!r}); lb = np.load({str(tmp_path / 'lab.npy')!r})
        w = open_sample_writer({str(out)!r}, total={TOTAL}, image_shape=({H}, {W}, {C}), meta={META!r})
        for s in range(0, 15, {BLOCK}):
            w.write(im[s:s + {BLOCK}], lb[s:s + {BLOCK}], start=s)
        os._exit(9)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert not out.exists()
    with open_w(out) as w:
        assert w.done == 15
        write_blocks(w, images, labels)
    got_i, got_l = read_samples(out)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "change",
    [
        {"meta": {**META, "fingerprint": "ckpt=OTHER"}},
        {"total": TOTAL + 1},
        {"image_shape": (H, W, 1)},
        {"has_labels": False},
    ],
)
def test_resume_mismatch_errors(tmp_path, fmt, change):
    images, labels = make_data()
    out = tmp_path / f"s.{fmt}"
    w = open_w(out)
    write_blocks(w, images, labels, upto=10)
    w.close()
    with pytest.raises(SampleFileError, match="different run") as ei:
        open_w(out, **change)
    assert "\n" not in str(ei.value) and isinstance(ei.value, ValueError)
    # resume=False starts over instead
    w = open_w(out, resume=False, **change)
    assert w.done == 0
    w.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_output_not_overwritten(tmp_path, fmt):
    images, labels = make_data()
    out = tmp_path / f"s.{fmt}"
    with open_w(out) as w:
        write_blocks(w, images, labels)
    before = out.read_bytes()
    with pytest.raises(SampleFileError, match="exists; pass --overwrite"):
        open_w(out)
    assert out.read_bytes() == before
    # overwrite=True replaces it, but only once the new file is complete
    images2, labels2 = make_data(seed=1)
    w = open_w(out, overwrite=True)
    write_blocks(w, images2, labels2, upto=10)
    assert out.read_bytes() == before
    write_blocks(w, images2, labels2)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_finalize_requires_all_samples(tmp_path, fmt):
    images, labels = make_data()
    out = tmp_path / f"s.{fmt}"
    w = open_w(out)
    write_blocks(w, images, labels, upto=7)
    with pytest.raises(SampleFileError, match="7/23"):
        w.finalize()
    with pytest.raises(SampleFileError, match="exceeds total"):
        w.write(np.zeros((TOTAL, H, W, C), np.uint8), np.zeros(TOTAL, np.int64), start=7)
    with pytest.raises(SampleFileError, match="uint8"):
        w.write(np.zeros((2, H, W, C), np.float32), np.zeros(2, np.int64), start=7)
    with pytest.raises(SampleFileError, match="shape"):
        w.write(np.zeros((2, C, H, W), np.uint8), np.zeros(2, np.int64), start=7)
    w.close()
    # leaving a with-block early keeps the work area for later
    with open_w(out) as w:
        write_blocks(w, images, labels, upto=12)
    assert not out.exists()
    with open_w(out) as w:
        assert w.done == 12


def test_npz_truncated_shard_is_redone(tmp_path):
    images, labels = make_data()
    out = tmp_path / "s.npz"
    w = open_w(out)
    write_blocks(w, images, labels, upto=15)
    w.close()
    work = tmp_path / "s.npz.partial"
    shards = sorted(work.glob("img_*.npy"))
    assert len(shards) == 3
    # simulate a crash that left the last shard truncated, and a stray temp file
    data = shards[-1].read_bytes()
    shards[-1].write_bytes(data[: len(data) - 17])
    (work / "img_000000000015.npy.tmp").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="discarded 1"):
        w = open_w(out)
    assert w.done == 10
    assert not (work / "img_000000000015.npy.tmp").exists()
    write_blocks(w, images, labels)
    w.finalize()
    got_i, got_l = read_samples(out)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)


def test_npz_missing_label_shard_and_gap(tmp_path):
    images, labels = make_data()
    out = tmp_path / "s.npz"
    w = open_w(out)
    write_blocks(w, images, labels, upto=20)
    w.close()
    work = tmp_path / "s.npz.partial"
    (work / "lab_000000000005.npy").unlink()  # block 5..9 incomplete -> it and later blocks redone
    with pytest.warns(UserWarning):
        w = open_w(out)
    assert w.done == 5
    assert sorted(p.name for p in work.glob("*.npy")) == ["img_000000000000.npy", "lab_000000000000.npy"]
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images)


def test_h5_crash_between_data_and_done(tmp_path):
    """Data resized/written past `done` (crash before the attribute update) is trimmed."""
    import h5py

    images, labels = make_data()
    out = tmp_path / "s.h5"
    w = open_w(out)
    write_blocks(w, images, labels, upto=10)
    w.close()
    with h5py.File(tmp_path / "s.h5.partial.h5", "r+") as f:
        f["images"].resize(13, axis=0)
        f["labels"].resize(13, axis=0)
    w = open_w(out)
    assert w.done == 10
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images)


def test_h5_corrupt_work_file_restarts(tmp_path):
    out = tmp_path / "s.h5"
    (tmp_path / "s.h5.partial.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    images, labels = make_data()
    with pytest.warns(UserWarning, match="starting over"):
        w = open_w(out)
    assert w.done == 0
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_labels(tmp_path, fmt):
    images, _ = make_data()
    out = tmp_path / f"s.{fmt}"
    with open_w(out, has_labels=False) as w:
        for s in range(0, TOTAL, 7):
            w.write(images[s : s + 7], start=s)
    got, lab = read_samples(out)
    np.testing.assert_array_equal(got, images)
    assert lab is None
    if fmt == "npz":
        assert np.load(out).files == ["arr_0"]


def test_zero_total(tmp_path):
    out = tmp_path / "e.npz"
    with open_w(out, total=0):
        pass
    with np.load(out) as z:
        assert z["arr_0"].shape == (0, H, W, C)
    assert read_samples(out)[0].shape == (0, H, W, C)


def test_bad_writer_args(tmp_path):
    with pytest.raises(SampleFileError, match="unsupported"):
        open_w(tmp_path / "x.png")
    with pytest.raises(SampleFileError, match="image_shape"):
        open_w(tmp_path / "x.npz", image_shape=(8, 8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_lock_against_second_writer(tmp_path, fmt):
    out = tmp_path / f"s.{fmt}"
    w = open_w(out)
    with pytest.raises(SampleFileError, match="in use"):
        open_w(out)
    with pytest.raises(SampleFileError, match="in use"):
        open_w(out, resume=False)
    w.close()
    open_w(out).close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_lock_across_processes(tmp_path, fmt):
    out = tmp_path / f"s.{fmt}"
    w = open_w(out)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from adm_cli.data.samples import open_sample_writer, SampleFileError
        try:
            open_sample_writer({str(out)!r}, total={TOTAL}, image_shape=({H}, {W}, {C}), meta={META!r})
        except SampleFileError as e:
            print("refused:", e)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    w.close()
    assert "refused:" in r.stdout and "in use" in r.stdout, r.stdout + r.stderr
