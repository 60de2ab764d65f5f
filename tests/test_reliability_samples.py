"""Reliability of sample outputs (issue 15): a full disk, a truncated h5 work file after a kill,
symlinked work areas and outputs, and corrupt shards / blocks found on resume."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.data import SampleFileError, read_samples
from tests.disk_helpers import in_small_disk, needs_tmpfs
from tests.sample_helpers import FORMATS, META, REPO, TOTAL, make_data, open_w, write_blocks

runner = CliRunner()
ADM = [sys.executable, "-m", "adm_cli"]


# ---- 1. full disk


WRITER_SCRIPT = """
import sys, warnings
import numpy as np
sys.path.insert(0, {repo!r})
from adm_cli.data.samples import open_sample_writer, SampleFileError
out = sys.argv[1]
rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=(20, 256, 256, 3), dtype=np.uint8)
labels = np.arange(20, dtype=np.int64)
try:
    with open_sample_writer(out, total=20, image_shape=(256, 256, 3), meta={{"fingerprint": "f"}}) as w:
        print("start", w.done, flush=True)
        for s in range(w.done, 20, 5):
            w.write(images[s:s + 5], labels[s:s + 5], start=s)
except SampleFileError as e:
    print("refused:", e, flush=True)
    sys.exit(2)
print("ok", flush=True)
"""


@needs_tmpfs
@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_full_disk_one_error_then_resumes(tmp_path, fmt):
    """A real full disk mid-run: one SampleFileError (no traceback, no segfault), no final file,
    and once space is freed the same run resumes from what was stored and completes exactly."""
    script_file = tmp_path / "w.py"
    script_file.write_text(WRITER_SCRIPT.format(repo=str(REPO)))
    res = tmp_path / "res"
    res.mkdir()
    r = in_small_disk(tmp_path, f"""
        python {script_file} "$D/s.{fmt}" >{res}/out1 2>{res}/err1; echo $? >{res}/rc1
        ls -a "$D" >{res}/ls1
        mount -o remount,size=8m "$D"
        python {script_file} "$D/s.{fmt}" >{res}/out2 2>{res}/err2; echo $? >{res}/rc2
        cp "$D/s.{fmt}" {res}/final.{fmt} 2>/dev/null
        ls -a "$D" >{res}/ls2
    """, size="2600k")
    assert r.returncode == 0, r.stderr
    rc1, out1, err1 = (res / "rc1").read_text().strip(), (res / "out1").read_text(), (res / "err1").read_text()
    assert rc1 == "2", out1 + err1
    assert "refused:" in out1 and "no space left on device" in out1, out1
    assert err1.strip() == "", err1  # no traceback, no "Exception ignored" noise
    assert f"s.{fmt}\n" not in (res / "ls1").read_text()  # no final file
    assert (res / "rc2").read_text().strip() == "0", (res / "out2").read_text() + (res / "err2").read_text()
    start = int((res / "out2").read_text().split("start ")[1].split()[0])
    assert 0 < start < 20  # resumed from what was stored before the disk filled up
    images, labels = read_samples(res / f"final.{fmt}")
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(images, rng.integers(0, 256, size=(20, 256, 256, 3), dtype=np.uint8))
    np.testing.assert_array_equal(labels, np.arange(20))
    assert "partial" not in (res / "ls2").read_text()


@pytest.mark.slow
@needs_tmpfs
@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_sample_full_disk(tmp_path, models, fmt):
    """`adm sample` onto a full disk: one `error:` line, exit 2, no final file; the same command
    after space is freed completes, equal to an uninterrupted run."""
    res = tmp_path / "res"
    res.mkdir()
    cmd = " ".join(ADM + ["sample", str(models["unet"]), "--num", "120", "--steps", "2", "--batch-size", "40", "-q",
                          "--out", f'"$D/s.{fmt}"'])
    r = in_small_disk(tmp_path, f"""
        {cmd} >/dev/null 2>{res}/err1; echo $? >{res}/rc1
        ls -a "$D" >{res}/ls1
        mount -o remount,size=4m "$D"
        {cmd} >/dev/null 2>{res}/err2; echo $? >{res}/rc2
        cp "$D/s.{fmt}" {res}/final.{fmt}
    """)
    assert r.returncode == 0, r.stderr
    err1 = (res / "err1").read_text()
    assert (res / "rc1").read_text().strip() == "2", err1
    lines = [line for line in err1.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no space left on device" in lines[0], err1
    assert f"s.{fmt}\n" not in (res / "ls1").read_text()
    assert (res / "rc2").read_text().strip() == "0", (res / "err2").read_text()
    ref = tmp_path / f"ref.{fmt}"
    subprocess.run(ADM + ["sample", str(models["unet"]), "--num", "120", "--steps", "2", "--batch-size", "40", "-q",
                          "--out", str(ref)], check=True, capture_output=True)
    got, want = read_samples(res / f"final.{fmt}"), read_samples(ref)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


class _Quota:
    """A raw file that fails with ENOSPC once `budget` more bytes have been written."""

    def __init__(self, f, budget: list[int]):
        self._f, self._budget = f, budget

    def write(self, b):
        n = len(memoryview(b).cast("B"))
        if n > self._budget[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= n
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_enospc_in_process(tmp_path, monkeypatch, fmt):
    """The same without a tmpfs: writes fail with ENOSPC after a byte budget (works for anyone)."""
    from adm_cli.data import sample_writer_h5, sample_writer_npz

    images, labels = make_data()
    out = tmp_path / f"s.{fmt}"
    budget = [10**9]
    if fmt == "h5":
        orig = sample_writer_h5._GuardedFile.__init__

        def init(self, path):
            orig(self, path)
            self._f = _Quota(self._f, budget)

        monkeypatch.setattr(sample_writer_h5._GuardedFile, "__init__", init)
    else:
        real_open = open
        monkeypatch.setattr(sample_writer_npz, "open", lambda *a, **k: _Quota(real_open(*a, **k), budget), raising=False)
    w = open_w(out)
    write_blocks(w, images, labels, upto=10)
    budget[0] = 600  # the next block does not fit
    with pytest.raises(SampleFileError, match="no space left on device"):
        write_blocks(w, images, labels)
    with pytest.raises(SampleFileError, match="earlier write failed"):
        w.finalize()
    w.close()
    assert not out.exists()
    budget[0] = 10**9
    with open_w(out) as w:
        assert w.done == 10
        write_blocks(w, images, labels)
    got_i, got_l = read_samples(out)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)


# ---- 2. truncated h5 work file


def test_h5_truncated_work_file_restarts(tmp_path):
    """A work file cut short by a kill is not "in use by another process": warn once, start over."""
    images, labels = make_data()
    out = tmp_path / "s.h5"
    w = open_w(out)
    write_blocks(w, images, labels, upto=15)
    w.close()
    work = tmp_path / "s.h5.partial.h5"
    os.truncate(work, work.stat().st_size // 2)
    with pytest.warns(UserWarning, match="starting over") as rec:
        w = open_w(out)
    assert len(rec) == 1
    assert w.done == 0
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images)
    assert not work.exists()


def test_h5_truncated_work_file_cli_after_kill(tmp_path, models):
    """A truncated OUT.partial.h5: the next `adm sample` says so in one warning and completes."""
    out = tmp_path / "s.h5"
    args = ["sample", str(models["unet"]), "--num", "8", "--steps", "2", "--batch-size", "4", "-q", "--out", str(out)]
    work = tmp_path / "s.h5.partial.h5"
    work.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 3000)  # what a kill during creation can leave
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "in use" not in r.output
    assert out.exists() and not work.exists()


def test_h5_lock_held_by_live_process_still_refused(tmp_path):
    """The real lock: a live writer in another process is still reported as in use."""
    out = tmp_path / "s.h5"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from adm_cli.data.samples import open_sample_writer
        w = open_sample_writer({str(out)!r}, total={TOTAL}, image_shape=(8, 6, 3), meta={META!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(SampleFileError, match="in use by another running process"):
            open_w(out)
        with pytest.raises(SampleFileError, match="in use by another running process"):
            open_w(out, resume=False)
    finally:
        proc.kill()
        proc.wait()
    open_w(out).close()  # the kernel dropped the lock with the process


# ---- 3. symbolic links


def test_npz_symlinked_work_area_is_followed(tmp_path):
    images, labels = make_data()
    out = tmp_path / "s.npz"
    elsewhere = tmp_path / "scratch" / "work"
    elsewhere.mkdir(parents=True)
    (tmp_path / "s.npz.partial").symlink_to(elsewhere)
    w = open_w(out)
    write_blocks(w, images, labels, upto=10)
    w.close()
    assert (elsewhere / "img_000000000005.npy").exists()
    with open_w(out) as w:
        assert w.done == 10
        write_blocks(w, images, labels)
    np.testing.assert_array_equal(read_samples(out)[0], images)
    assert not os.path.lexists(tmp_path / "s.npz.partial") and not elsewhere.exists()


def test_npz_symlinked_work_area_with_other_files_discard(tmp_path):
    """--no-resume on a symlinked work area clears our files only, never the folder's other files."""
    images, labels = make_data()
    out = tmp_path / "s.npz"
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("keep")
    (tmp_path / "s.npz.partial").symlink_to(elsewhere)
    w = open_w(out)
    write_blocks(w, images, labels, upto=10)
    w.close()
    with open_w(out, resume=False) as w:
        assert w.done == 0
        write_blocks(w, images, labels)
    np.testing.assert_array_equal(read_samples(out)[0], images)
    assert (elsewhere / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("fmt", FORMATS)
def test_dangling_symlinked_work_area_is_one_line(tmp_path, fmt):
    out = tmp_path / f"s.{fmt}"
    work = tmp_path / ("s.npz.partial" if fmt == "npz" else "s.h5.partial.h5")
    work.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SampleFileError, match="symbolic link|not a regular file") as e:
        open_w(out)
    assert "\n" not in str(e.value)
    assert work.is_symlink() and not (tmp_path / "nowhere").exists()


def test_h5_symlinked_work_file_is_refused(tmp_path):
    """The h5 work file is renamed to OUT when done: a symlink would publish the link, not the data."""
    target = tmp_path / "elsewhere.h5"
    target.write_bytes(b"")
    (tmp_path / "s.h5.partial.h5").symlink_to(target)
    with pytest.raises(SampleFileError, match="not a regular file"):
        open_w(tmp_path / "s.h5")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dangling", [False, True])
def test_writer_refuses_existing_symlink_out(tmp_path, fmt, dangling):
    out = tmp_path / f"s.{fmt}"
    target = tmp_path / "target"
    if not dangling:
        target.write_text("precious")
    out.symlink_to(target)
    with pytest.raises(SampleFileError, match="exists; pass --overwrite"):
        open_w(out)
    assert out.is_symlink() and (dangling or target.read_text() == "precious")


@pytest.mark.parametrize("command", ["sample", "upsample"])
@pytest.mark.parametrize("which", ["grid", "out"])
@pytest.mark.parametrize("kind", ["file", "symlink", "dangling"])
def test_cli_refuses_existing_grid_and_out(tmp_path, models, command, which, kind):
    """--grid / --out onto an existing path (a symlink too, dangling or not) needs --overwrite,
    refused before any model is loaded."""
    target = tmp_path / "precious.png"
    path = tmp_path / ("g.png" if which == "grid" else "s.npz")
    if kind == "file":
        path.write_text("precious")
    else:
        if kind == "symlink":
            target.write_text("precious")
        path.symlink_to(target)
    out = path if which == "out" else tmp_path / "s.npz"
    args = [command, str(models["unet"]), "--out", str(out), "--num", "4", "--steps", "2", "-q"]
    if command == "upsample":
        args += ["--base", str(tmp_path / "base.npz")]
    if which == "grid":
        args += ["--grid", str(path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [f"error: {path} exists; pass --overwrite to replace it"], r.output
    if kind == "file":
        assert path.read_text() == "precious"
    else:
        assert path.is_symlink() and os.readlink(path) == str(target)
        assert kind == "dangling" or target.read_text() == "precious"


def test_cli_grid_overwrite_replaces_link_not_target(tmp_path, models):
    target = tmp_path / "precious.png"
    target.write_text("precious")
    grid = tmp_path / "g.png"
    grid.symlink_to(target)
    r = runner.invoke(app, ["sample", str(models["unet"]), "--out", str(tmp_path / "s.npz"), "--num", "4",
                            "--steps", "2", "-q", "--grid", str(grid), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not grid.is_symlink() and grid.read_bytes()[:4] == b"\x89PNG"
    assert target.read_text() == "precious"


# ---- 4. digests of shards / blocks


def test_npz_flipped_bytes_in_shard_are_redone(tmp_path):
    images, labels = make_data()
    out = tmp_path / "s.npz"
    w = open_w(out)
    write_blocks(w, images, labels, upto=20)
    w.close()
    shard = tmp_path / "s.npz.partial" / "img_000000000005.npy"
    data = bytearray(shard.read_bytes())
    data[-100:-36] = bytes(b ^ 0xFF for b in data[-100:-36])  # 64 flipped bytes; header and size intact
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="img_000000000005.npy does not match its stored SHA-256") as rec:
        w = open_w(out)
    assert len(rec) == 1
    assert w.done == 5
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images)
    np.testing.assert_array_equal(read_samples(out)[1], labels)


def test_npz_flipped_label_shard_and_missing_digest(tmp_path):
    images, labels = make_data()
    out = tmp_path / "s.npz"
    w = open_w(out)
    write_blocks(w, images, labels, upto=20)
    w.close()
    work = tmp_path / "s.npz.partial"
    lab = work / "lab_000000000010.npy"
    data = bytearray(lab.read_bytes())
    data[-8] ^= 1
    lab.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="lab_000000000010.npy does not match"):
        w = open_w(out)
    assert w.done == 10
    w.close()
    (work / "img_000000000005.npy.sha256").unlink()  # a shard without its digest is not trusted
    with pytest.warns(UserWarning, match="img_000000000005.npy does not match"):
        w = open_w(out)
    assert w.done == 5
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[1], labels)


def test_npz_shard_corrupted_before_finalize_is_caught(tmp_path):
    """A shard that changes after it was verified is caught while the final file is assembled."""
    images, labels = make_data()
    out = tmp_path / "s.npz"
    w = open_w(out)
    write_blocks(w, images, labels)
    shard = tmp_path / "s.npz.partial" / "img_000000000010.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(SampleFileError, match="img_000000000010.npy changed on disk"):
        w.finalize()
    w.close()
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    with open_w(out) as w:
        assert w.done == 10
        write_blocks(w, images, labels)
    np.testing.assert_array_equal(read_samples(out)[0], images)


def test_h5_flipped_bytes_in_block_are_redone(tmp_path):
    import h5py

    images, labels = make_data()
    out = tmp_path / "s.h5"
    w = open_w(out)
    write_blocks(w, images, labels, upto=20)
    w.close()
    with h5py.File(tmp_path / "s.h5.partial.h5", "r+") as f:
        block = f["images"][10:15]
        block.reshape(-1)[:64] ^= 0xFF  # 64 flipped bytes; shape and `done` intact
        f["images"][10:15] = block
    with pytest.warns(UserWarning, match="do not match their stored digest") as rec:
        w = open_w(out)
    assert len(rec) == 1
    assert w.done == 10
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[0], images)
    np.testing.assert_array_equal(read_samples(out)[1], labels)


def test_h5_flipped_label_is_redone(tmp_path):
    import h5py

    images, labels = make_data()
    out = tmp_path / "s.h5"
    w = open_w(out)
    write_blocks(w, images, labels, upto=20)
    w.close()
    with h5py.File(tmp_path / "s.h5.partial.h5", "r+") as f:
        f["labels"][7] = f["labels"][7] + 1
    with pytest.warns(UserWarning, match="do not match"):
        w = open_w(out)
    assert w.done == 5
    write_blocks(w, images, labels)
    w.finalize()
    np.testing.assert_array_equal(read_samples(out)[1], labels)
