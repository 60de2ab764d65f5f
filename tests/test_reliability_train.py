"""Reliability of training runs and checkpoints (issue 15): a full disk, two processes on one
run, a damaged newest checkpoint, flipped bytes in a checkpoint, the run options a resume keeps,
and the message for a pickle that is not a safe checkpoint. Each case is one `error:` line and
exit 2 where it fails, and never loses the user's last good checkpoint."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from adm_cli.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint, verify_digest
from adm_cli.files import FileLock, LockBusy
from adm_cli.train.run_dir import RunDir, RunDirError
from tests.disk_helpers import in_small_disk, needs_tmpfs
from tests.cli_helpers import DATA, adm, adm_fails, invoke, stderr_of

TINY = [
    "--preset", "tiny", "--image-size", "8", "--model-channels", "32", "--diffusion-steps", "50",
    "--batch-size", "4", "--quiet",
]
REPO = Path(__file__).resolve().parents[1]


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def flip_bytes_in_tensor_data(path: Path, n: int = 64) -> None:
    """Invert n bytes in the middle of the largest tensor's storage (inside a zip entry's data,
    not the zip directory or the pickle)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
        f.seek(start)
        chunk = f.read(n)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """4 steps, a checkpoint every 2 (step 2 and 4), a metrics line per step."""
    run = tmp_path_factory.mktemp("base") / "run"
    adm("train-diffusion", DATA, "--out", run, *TINY, "--steps", 4, "--save-every", 2, "--log-every", 1)
    assert checkpoints(run) == ["step-00000002.pt", "step-00000004.pt"]
    return run


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


# --------------------------------------------------------------------------- full disk


def test_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """torch.save hides the ENOSPC inside a RuntimeError ("unexpected pos ..."); it was a traceback
    and exit 1. The half-written temporary goes, the previous checkpoint stays."""
    real_save = torch.save
    calls = {"n": 0}

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"\0" * 4096)  # a half-written file, as on a real full disk
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1756416 vs 1756304")

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    run = tmp_path / "run"
    out = adm_fails("train-diffusion", DATA, "--out", run, *TINY, "--steps", 4, "--save-every", 2, "--log-every", 1)
    assert "no space left on device" in out and "step-00000004.pt" in out and "step-00000002.pt" in out
    assert checkpoints(run) == ["step-00000002.pt"]  # no temporary left behind
    monkeypatch.setattr(torch, "save", real_save)
    assert read_checkpoint(run / "checkpoints/step-00000002.pt")["step"] == 2
    adm("train-diffusion", "--out", run, "--resume", "--quiet")  # space freed: the run continues
    assert read_checkpoint(run / "checkpoints/step-00000004.pt")["step"] == 4


def test_save_checkpoint_never_replaces_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"format": "adm-checkpoint", "model": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def fail(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {path}: no space left on device"):
        save_checkpoint(path, {"format": "adm-checkpoint", "model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_on_metrics_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    os.symlink("/dev/full", run.metrics)  # every write: ENOSPC
    with pytest.raises(RunDirError, match=r"cannot write .*metrics.jsonl: no space left on device"):
        run.append_metrics({"step": 1})


@pytest.mark.slow
@needs_tmpfs
def test_real_full_disk_then_resume_after_space_is_freed(tmp_path):
    """On a real 5 MB tmpfs (in a private mount namespace, so nothing to clean up): the second
    checkpoint does not fit; one line, exit 2, the first kept; with more space, resume finishes."""
    saved = tmp_path / "saved"
    saved.mkdir()
    adm_cmd = f"{sys.executable} -m adm_cli train-diffusion"
    train = f"{adm_cmd} {DATA} --out \"$D/r\" {' '.join(TINY)} --steps 6 --save-every 2 --log-every 1"
    in_small_disk(tmp_path, f"""
        {train} 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1
        ls -A "$D/r/checkpoints" > {tmp_path}/ls1
        cp "$D"/r/checkpoints/*.pt {saved}/
        mount -o remount,size=30000k "$D"
        {adm_cmd} --out "$D/r" --resume --quiet 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2
        ls -A "$D/r/checkpoints" > {tmp_path}/ls2
    """, size="5000k", timeout=300)
    err = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "2", err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no space left on device" in err, err
    assert (tmp_path / "ls1").read_text().split() == ["step-00000002.pt"]  # no half-written temporary
    assert read_checkpoint(saved / "step-00000002.pt")["step"] == 2
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    assert "step-00000006.pt" in (tmp_path / "ls2").read_text().split()


# --------------------------------------------------------------------------- locking


def test_second_process_on_a_running_run_is_refused_and_touches_nothing(run_copy):
    before = snapshot(run_copy)
    lock = FileLock(run_copy / ".lock").acquire()  # another process is training this run
    try:
        out = adm_fails("train-diffusion", "--out", run_copy, "--resume", "--steps", 6, "--quiet")
        assert f"{run_copy} is in use by another running process" in out
    finally:
        lock.release()
    assert snapshot(run_copy) == before
    adm("train-diffusion", "--out", run_copy, "--resume", "--steps", 5, "--quiet")  # free again


def test_training_holds_the_lock_and_releases_it(tmp_path, monkeypatch):
    from adm_cli.train import loop

    seen = []
    real_train = loop.train

    def spy(*args, **kwargs):
        try:
            FileLock(tmp_path / "r" / ".lock").acquire().release()
            seen.append("free")
        except LockBusy:
            seen.append("held")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("adm_cli.train.session.train", spy)
    adm("train-diffusion", DATA, "--out", tmp_path / "r", *TINY, "--steps", 1)
    assert seen == ["held"]
    FileLock(tmp_path / "r" / ".lock").acquire().release()  # released at the end


def test_classifier_run_is_locked_too(tmp_path):
    run = tmp_path / "c"
    adm("train-classifier", DATA, "--out", run, "--model-channels", "32", "--num-res-blocks", "1", "--batch-size", "4",
        "--steps", 1, "--val-fraction", "0", "--quiet")
    with FileLock(run / ".lock"):
        assert "in use by another running process" in adm_fails("train-classifier", "--out", run, "--resume", "--steps", 2)
    assert checkpoints(run) == ["step-00000001.pt"]


def test_lock_file_alone_does_not_make_a_directory_non_empty(tmp_path):
    run = RunDir(tmp_path / "r")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".lock").touch()  # left by an earlier attempt
    run.create({"kind": "diffusion"})
    run.unlock()
    with pytest.raises(RunDirError, match="not empty"):
        RunDir(tmp_path / "r").create({"kind": "diffusion"})
    other = RunDir(tmp_path / "s")
    (tmp_path / "s").mkdir()
    with FileLock(tmp_path / "s" / ".lock"):
        with pytest.raises(RunDirError, match="in use by another running process"):
            other.create({"kind": "diffusion"})
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lock"]


@pytest.mark.slow
def test_two_real_processes_resuming_one_run(run_copy):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "adm_cli", "train-diffusion", "--out", str(run_copy), "--resume",
                              "--steps", "100000", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the first process holds the run
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            try:
                FileLock(run_copy / ".lock").acquire().release()
            except LockBusy:
                break
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "adm_cli", "train-diffusion", "--out", str(run_copy), "--resume",
                                 "--steps", "100000", "--quiet"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert "in use by another running process" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    FileLock(run_copy / ".lock").acquire().release()  # the kernel dropped the killed process's lock
    logged = steps_logged(run_copy)
    assert logged == sorted(set(logged))  # no duplicate or out-of-order metrics


# --------------------------------------------------------------------------- resume


def test_resume_falls_back_past_a_truncated_newest_checkpoint(run_copy):
    newest = run_copy / "checkpoints/step-00000004.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    result = invoke("train-diffusion", "--out", run_copy, "--resume", "--steps", 6, "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in stderr_of(result).splitlines() if "step-00000004.pt" in line]
    assert len(warnings) == 1 and "skipped" in warnings[0] and "step-00000004.pt.corrupt" in warnings[0], stderr_of(result)
    assert (run_copy / "checkpoints/step-00000004.pt.corrupt").read_bytes() == data[: len(data) // 2]  # kept, aside
    assert read_checkpoint(run_copy / "checkpoints/step-00000006.pt")["step"] == 6
    assert steps_logged(run_copy) == [1, 2, 3, 4, 5, 6]


def test_resume_falls_back_past_flipped_bytes(run_copy):
    flip_bytes_in_tensor_data(run_copy / "checkpoints/step-00000004.pt")
    result = invoke("train-diffusion", "--out", run_copy, "--resume", "--steps", 5, "--quiet")
    assert result.exit_code == 0, result.output
    assert "checksum" in stderr_of(result) and "resuming from step-00000002.pt" in stderr_of(result)
    assert read_checkpoint(run_copy / "checkpoints/step-00000005.pt")["step"] == 5


def test_resume_with_no_usable_checkpoint_is_refused(run_copy):
    for p in (run_copy / "checkpoints").glob("*.pt"):
        p.write_bytes(b"garbage")
    before = snapshot(run_copy)
    out = adm_fails("train-diffusion", "--out", run_copy, "--resume", "--steps", 6, "--quiet")
    assert "no usable checkpoint" in out and "step-00000004.pt" in out
    assert snapshot(run_copy) == before  # nothing renamed, nothing trained over


def test_resume_keeps_the_run_options(run_copy):
    """--log-every 1, --save-every 2 and --steps 4 from the first invocation hold on resume."""
    adm("train-diffusion", "--out", run_copy, "--resume", "--quiet")
    assert steps_logged(run_copy) == [1, 2, 3, 4]  # --steps 4 kept: nothing to do
    adm("train-diffusion", "--out", run_copy, "--resume", "--steps", 7, "--quiet")
    assert steps_logged(run_copy) == [1, 2, 3, 4, 5, 6, 7]  # not only 7 (the default --log-every 50)
    assert checkpoints(run_copy) == ["step-00000002.pt", "step-00000004.pt", "step-00000006.pt", "step-00000007.pt"][-3:]
    assert json.loads((run_copy / "run.json").read_text())["options"]["steps"] == 7


def test_resume_with_a_new_cadence_says_so_and_keeps_it(run_copy):
    result = invoke("train-diffusion", "--out", run_copy, "--resume", "--steps", 8, "--log-every", 2)
    assert result.exit_code == 0, result.output
    assert "--log-every 2 (the run had 1" in stderr_of(result)
    assert steps_logged(run_copy) == [1, 2, 3, 4, 6, 8]
    assert json.loads((run_copy / "run.json").read_text())["options"]["log_every"] == 2


# --------------------------------------------------------------------------- checkpoint files


def test_flipped_bytes_in_a_checkpoint_are_refused(models, tmp_path):
    path = tmp_path / "tiny.pt"
    shutil.copy(models["unet"], path)
    assert read_checkpoint(path)["digest"]["model"].startswith("sha256:")
    flip_bytes_in_tensor_data(path)
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(path)
    out = adm_fails("sample", path, "-n", 2, "--ddim", 5, "--out", tmp_path / "s.npz", "--quiet")
    assert str(path) in out and "corrupt checkpoint" in out
    assert not (tmp_path / "s.npz").exists()


def test_digest_per_section_sampling_checks_only_the_weights_it_loads(base_run):
    """The digest has one entry per section (model, each EMA rate, training state): loading for
    sampling verifies the weights it takes, a resume verifies everything."""
    path = base_run / "checkpoints" / "step-00000004.pt"
    data = read_checkpoint(path)
    rate = next(iter(data["ema"]))
    assert {"model", f"ema/{rate}", "train_state"} <= set(data["digest"])
    name = next(iter(data["model"]))
    original = data["model"][name]
    data["model"][name] = original + 1  # damage the raw weights only
    verify_digest(path, data, [f"ema/{rate}"])  # what `adm sample RUN` loads: still intact
    for sections in (["model"], None):
        with pytest.raises(CheckpointError, match="checksum"):
            verify_digest(path, data, sections)
    data["model"][name] = original
    verify_digest(path, data)
    del data["train_state"]  # a section gone is damage too, for a whole check
    with pytest.raises(CheckpointError, match="checksum"):
        verify_digest(path, data)


def test_checkpoints_without_a_digest_still_load(models, tmp_path):
    data = read_checkpoint(models["unet"])
    del data["digest"]
    torch.save(data, tmp_path / "old.pt")  # as written before adm stored digests
    assert load_model(tmp_path / "old.pt").step == 7
    torch.save(data["model"], tmp_path / "bare.pt")  # an OpenAI-style bare state dict
    assert read_checkpoint(tmp_path / "bare.pt").keys() == data["model"].keys()


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_message_is_plain(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not a safe checkpoint" in message
    assert "Re-running" not in message
    out = adm_fails("sample", path, "-n", 1, "--out", tmp_path / "s.npz", "--quiet")
    assert "not a safe checkpoint" in out
    assert "must never run" not in capsys.readouterr().out
