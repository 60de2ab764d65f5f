"""Shared data and helpers for the sample-file tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from adm_cli.data import open_sample_writer

H, W, C = 8, 6, 3
TOTAL = 23
BLOCK = 5
META = {"fingerprint": "ckpt=abc;steps=10;seed=0", "command": "adm sample --n 23", "config": {"a": 1}, "seeds": [0, 1]}
REPO = Path(__file__).resolve().parents[1]


def make_data(total=TOTAL, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(total, H, W, C), dtype=np.uint8)
    labels = rng.integers(0, 1000, size=(total,), dtype=np.int64)
    return images, labels


def write_blocks(w, images, labels, upto=None):
    upto = len(images) if upto is None else upto
    while w.done < upto:
        s = w.done
        e = min(upto, s + BLOCK)
        w.write(images[s:e], labels[s:e], start=s)


def open_w(path, **kw):
    kw.setdefault("total", TOTAL)
    kw.setdefault("image_shape", (H, W, C))
    kw.setdefault("meta", META)
    return open_sample_writer(path, **kw)


def evaluator_stream(path, name="arr_0"):
    """What OpenAI's evaluator does: stream the npy member, parse its header, read rows."""
    with open(path, "rb") as f, zipfile.ZipFile(f, "r") as zf:
        with zf.open(f"{name}.npy", "r") as arr_f:
            version = np.lib.format.read_magic(arr_f)
            assert version == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(arr_f)
            assert not fortran
            rows = []
            row = int(np.prod(shape[1:])) * dtype.itemsize
            for _ in range(shape[0]):
                rows.append(np.frombuffer(arr_f.read(row), dtype=dtype).reshape(shape[1:]))
            assert arr_f.read() == b""
    return np.stack(rows), shape, dtype


FORMATS = ["npz", "h5"]


def kill_when_ready(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds, and check it was killed, not finished."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
