"""Issue 15 (evaluate cache, command line): a damaged feature-cache chunk is dropped, recomputed and
reported in one line; bad numeric options and every usage error are refused up front with one
`error:` line and exit 2; a full disk names what was being written; stderr carries messages (one
line each) but no progress bars when it is not a terminal, and only warnings with --quiet."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.cli.errors import user_errors
from adm_cli.evaluate import evaluate
from adm_cli.evaluate.features import FeatureCache, extract_features, feature_cache_dir
from adm_cli.evaluate.sources import SampleSource
from adm_cli.reporting import Reporter
from tests.eval_helpers import ToyFeatures, random_inception_state

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def err(result) -> str:
    return getattr(result, "stderr", None) or result.output


def one_error_line(result) -> str:
    text = err(result).strip()
    assert result.exit_code == 2, (result.exit_code, text)
    assert text.count("\n") == 0 and text.startswith("error: "), text
    assert "╭" not in text and "Traceback" not in text
    return text


# ---- 1. the evaluate feature cache


def _images(seed: int, n: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped":  # bytes flipped inside the arrays: the zip still opens, its CRC does not match
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        path.write_bytes(bytes(data))
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"not a zip file at all" * 10)
    elif how == "wrong-shape":  # a well-formed npz with the wrong arrays
        with np.load(path) as z:
            rows = int(z["rows"])
        np.savez(path, rows=np.int64(rows), pool=np.zeros((rows, 3), np.float32), spatial=np.zeros((rows, 5), np.float32))
    elif how == "wrong-rows":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["rows"] = np.int64(len(arrays["pool"]) + 7)
        np.savez(path, **arrays)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["flipped", "truncated", "empty", "garbage", "wrong-shape", "wrong-rows"])
def test_damaged_cache_chunk_is_dropped_recomputed_and_reported(tmp_path, capsys, how):
    np.savez(tmp_path / "ref.npz", _images(0, 30))
    np.savez(tmp_path / "sam.npz", _images(1, 25))
    net = ToyFeatures()
    first = evaluate(tmp_path / "ref.npz", tmp_path / "sam.npz", net, reporter=Reporter(quiet=True))
    assert net.seen == 55
    chunks = sorted((tmp_path / ".adm-cache").glob("sam.npz.*/feat-*.npz"))
    assert len(chunks) == 1
    _damage(chunks[0], how)
    capsys.readouterr()

    again = evaluate(tmp_path / "ref.npz", tmp_path / "sam.npz", net, reporter=Reporter(quiet=True))
    warnings = _cache_warnings(capsys.readouterr().err)
    assert again.metrics == first.metrics
    assert net.seen == 55 + 25  # only the damaged chunk's images again
    assert len(warnings) == 1 and warnings[0].startswith("warning: feature cache chunk") and chunks[0].name in warnings[0]
    assert "recomputing" in warnings[0]
    # repaired: the third run reads the cache, silently
    third = evaluate(tmp_path / "ref.npz", tmp_path / "sam.npz", net, reporter=Reporter(quiet=True))
    assert net.seen == 80 and third.metrics == first.metrics and _cache_warnings(capsys.readouterr().err) == []


def _cache_warnings(err: str) -> list[str]:
    """stderr lines but the small-count FID warning every toy evaluation gets."""
    return [ln for ln in err.splitlines() if ln.strip() and "not comparable with published numbers" not in ln]


def test_damaged_middle_chunk_recomputes_from_there(tmp_path):
    images = _images(5, 50)
    np.savez(tmp_path / "s.npz", images)
    src = SampleSource(tmp_path / "s.npz")
    net = ToyFeatures()
    said: list[str] = []
    cache = FeatureCache(feature_cache_dir(src, net), n=50, net_id=net.id, source=src.name, dims=net.dims, warn=said.append)
    extract_features(src, net, batch_size=5, cache=cache, chunk=10)
    assert cache.done() == 50 and len(cache.chunks()) == 5
    _damage(cache.root / "feat-000000000020.npz", "flipped")
    again = ToyFeatures()
    feats = extract_features(src, again, batch_size=5, cache=cache, chunk=10)
    assert again.seen == 30 and len(said) == 1 and "from image 20" in said[0]
    np.testing.assert_allclose(feats["pool"], ToyFeatures()(images)["pool"], rtol=1e-6)


def test_chunk_damaged_after_the_check_is_recomputed(tmp_path, monkeypatch):
    """read() finds a chunk that went bad after done() checked it: dropped and computed again, once."""
    np.savez(tmp_path / "s.npz", _images(6, 20))
    src = SampleSource(tmp_path / "s.npz")
    net = ToyFeatures()
    said: list[str] = []
    cache = FeatureCache(feature_cache_dir(src, net), n=20, net_id=net.id, source=src.name, dims=net.dims, warn=said.append)
    extract_features(src, net, batch_size=5, cache=cache, chunk=10)
    real_fill = __import__("adm_cli.evaluate.features", fromlist=["_fill"])._fill
    calls = []

    def fill_then_damage(store, *args):
        real_fill(store, *args)
        if not calls:
            _damage(store.root / "feat-000000000010.npz", "truncated")
        calls.append(1)

    monkeypatch.setattr("adm_cli.evaluate.features._fill", fill_then_damage)
    again = ToyFeatures()
    feats = extract_features(src, again, batch_size=5, cache=cache, chunk=10)
    assert len(calls) == 2 and again.seen == 10 and len(said) == 1 and len(feats["pool"]) == 20


def test_chunk_writes_are_tmp_then_rename(tmp_path, monkeypatch):
    """A write that dies half way leaves no chunk under its final name and no temporary file."""
    np.savez(tmp_path / "s.npz", _images(7, 20))
    src = SampleSource(tmp_path / "s.npz")
    net = ToyFeatures()
    cache = FeatureCache(feature_cache_dir(src, net), n=20, net_id=net.id, source=src.name, dims=net.dims)
    real_savez = np.savez

    def dies_half_way(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", dies_half_way)
    with pytest.raises(OSError):
        extract_features(src, net, batch_size=5, cache=cache, chunk=10)
    assert sorted(p.name for p in cache.root.iterdir()) == ["meta.json"]
    monkeypatch.setattr(np, "savez", real_savez)
    # a temporary file left by a killed writer is never read as a chunk
    (cache.root / "feat-000000000000.4242.tmp.npz").write_bytes(b"half")
    assert cache.done() == 0
    assert len(extract_features(src, ToyFeatures(), batch_size=5, cache=cache, chunk=10)["pool"]) == 20


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    root = tmp_path_factory.mktemp("inception")
    weights = root / "inception.pth"
    torch.save(random_inception_state(), weights)
    rng = np.random.default_rng(0)
    np.savez(root / "ref.npz", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    np.savez(root / "sam.npz", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    return root, weights


@pytest.mark.slow
def test_evaluate_cli_recovers_from_a_corrupt_cache_chunk(inception):
    """The reported fault: a damaged chunk made every later `adm evaluate` fail with BadZipFile."""
    root, weights = inception
    args = ("evaluate", root / "ref.npz", root / "sam.npz", "--inception-weights", weights, "--metrics", "fid", "-b", 3)
    first = run(*args)
    assert first.exit_code == 0, err(first)
    (chunk,) = (root / ".adm-cache").glob("sam.npz.*/feat-*.npz")
    _damage(chunk, "flipped")
    again = run(*args)
    assert again.exit_code == 0, err(again)
    assert again.stdout == first.stdout
    said = [ln for ln in err(again).splitlines() if "feature cache" in ln]
    assert len(said) == 1 and said[0].startswith("warning: ") and "BadZipFile" not in err(again).replace(said[0], "")


# ---- 2. numeric options refused up front (no model loaded: the checkpoint does not even exist)

NUMERIC = [
    ("sample", "--eta", "nan"),
    ("sample", "--eta", "inf"),
    ("sample", "--eta", "-1"),
    ("sample", "--guidance", "nan"),
    ("sample", "--guidance", "inf"),
    ("sample", "--cfg-scale", "nan"),
    ("sample", "--seed", str(2**64)),
    ("sample", "--seed", "-1"),
    ("sample", "--num", str(10**12)),
    ("sample", "--num", "0"),
    ("sample", "--batch-size", "0"),
    ("sample", "--steps", "-3"),
    ("sample", "--nfe", "0"),
    ("sample", "--class", "-1"),
    ("sample", "--image-size", "0"),
    ("upsample", "--eta", "nan"),
    ("upsample", "--cfg-scale", "-inf"),
    ("upsample", "--num", "0"),
    ("upsample", "--seed", str(2**70)),
    ("interpolate", "--seed", "-2"),
    ("interpolate", "--steps", "0"),
    ("interpolate", "--t", "-1"),
    ("interpolate", "--batch-size", "-4"),
    ("evaluate", "--batch-size", "0"),
    ("ref-batch", "--seed", "-1"),
    ("ref-batch", "--num", "0"),
    ("demo", "--minutes", "nan"),
    ("demo", "--guidance", "nan"),
    ("demo", "--per-class", "0"),
    ("train-diffusion", "--seed", str(2**64)),
    ("train-diffusion", "--minutes", "nan"),
    ("train-classifier", "--seed", "-1"),
]


def _command_line(command: str, tmp: Path) -> list[str]:
    missing = tmp / "missing.pt"
    return {
        "sample": ["sample", missing, "--out", tmp / "s.npz", "--classifier", tmp / "c.pt", "--sampler", "ddim"],
        "upsample": ["upsample", missing, "--base", tmp / "b.npz", "--out", tmp / "u.npz", "--sampler", "ddim"],
        "interpolate": ["interpolate", missing, tmp / "a.png", tmp / "b.png", "--out", tmp / "interp"],
        "evaluate": ["evaluate", tmp / "ref.npz", tmp / "sam.npz"],
        "ref-batch": ["ref-batch", tmp / "missing-data", "--out", tmp / "ref.npz"],
        "demo": ["demo", "--out", tmp / "demo"],
        "train-diffusion": ["train-diffusion", tmp / "missing-data", "--out", tmp / "run"],
        "train-classifier": ["train-classifier", tmp / "missing-data", "--out", tmp / "run"],
    }[command]


@pytest.mark.parametrize(("command", "option", "value"), NUMERIC, ids=[f"{c}{o}={v[:6]}" for c, o, v in NUMERIC])
def test_bad_numeric_option_refused_up_front(tmp_path, command, option, value):
    result = run(*_command_line(command, tmp_path), option, value)
    line = one_error_line(result)
    assert f"'{option}'" in line, line  # about the option, not the missing checkpoint or data
    assert "not found" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_largest_seed_is_accepted(models, tmp_path):
    out = tmp_path / "s.npz"
    result = run("sample", models["unet"], "--num", 2, "--ddim", 2, "--seed", 2**63 - 1, "--out", out, "--quiet")
    assert result.exit_code == 0, err(result)
    with np.load(out) as z:
        assert z["arr_0"].shape[0] == 2


# ---- 3. usage errors: one line, exit 2, for every command; --help unchanged

USAGE = [
    ("sample", "--precision", "fp8"),
    ("sample", "--weights", "best"),
    ("sample", "--no-such-option"),
    ("sample",),  # missing argument
    ("sample", "CKPT"),  # missing --out
    ("sample", "CKPT", "--out", "s.npz", "--num", "many"),
    ("upsample", "CKPT", "--out", "u.npz", "--base", "b.npz", "--attention-order", "sideways"),
    ("interpolate", "CKPT", "a.png", "b.png", "--out", "d", "--mode", "warp"),
    ("evaluate", "ref.npz", "sam.npz", "--resize", "bilinear"),
    ("evaluate", "ref.npz"),
    ("ref-batch", "data", "--out", "r.npz", "--stats", "yes"),
    ("train-diffusion", "data", "--out", "run", "--loss", "l1"),
    ("train-classifier", "data", "--out", "run", "--pool", "max"),
    ("info",),
    ("demo", "--minutes", "soon"),
    ("no-such-command",),
    ("--no-such-flag",),
]


@pytest.mark.parametrize("args", USAGE, ids=["_".join(a) for a in USAGE])
def test_usage_errors_are_one_line(tmp_path, args):
    result = run(*[tmp_path / a if a in ("CKPT", "d", "run") else a for a in args])
    line = one_error_line(result)
    assert "--help" in line  # says where to look


@pytest.mark.parametrize("command", ["sample", "upsample", "interpolate", "evaluate", "ref-batch", "train-diffusion",
                                     "train-classifier", "info", "demo"])
def test_help_still_exits_0(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output and err(result).strip() in ("", result.output.strip())


def test_entry_point_usage_error_is_one_line():
    """The installed entry point (here `python -m adm_cli`), not only the test runner."""
    proc = subprocess.run(
        [sys.executable, "-m", "adm_cli", "sample", "x.pt", "--out", "s.npz", "--precision", "fp8"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: invalid value for '--precision'"), proc.stderr


# ---- 4. a full disk without a file name


def _full_disk(filename=None):
    @user_errors
    def command(out=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    return command


def test_disk_full_names_the_output_and_never_prints_empty_parentheses(capsys):
    import typer

    for fn, kwargs, expect in (
        (_full_disk(), {"out": Path("runs/x/s.npz")}, "writing runs/x/s.npz"),
        (_full_disk("/data/s.partial.npz"), {}, "writing /data/s.partial.npz"),
        (_full_disk(), {}, "no space left on device;"),
    ):
        with pytest.raises(typer.Exit) as e:
            fn(**kwargs)
        assert e.value.exit_code == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and text.startswith("error: no space left on device") and "()" not in text
        assert expect in text, text


def test_disk_full_reported_by_text_only(capsys):
    """h5py and friends sometimes keep only the text of ENOSPC."""
    import typer

    @user_errors
    def command(out=None):
        raise OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')")

    with pytest.raises(typer.Exit):
        command(out=Path("s.h5"))
    assert capsys.readouterr().err == "error: no space left on device writing s.h5; free some space and run the same command again\n"


# ---- 5. stderr: messages (one line each) but no progress bars when not a terminal; --quiet


BAR_MARKS = ("\r", "\x1b[", "━", "╸", "█")


def test_reporter_when_stderr_is_not_a_terminal(capsys):
    r = Reporter()
    assert not r.show_progress
    long = "resuming " + "x" * 300
    r.info(long)
    with r.progress("features", 10) as tick:
        for _ in range(10):
            tick()
    r.warn("careful")
    text = capsys.readouterr().err
    assert text == f"{long}\nwarning: careful\n"  # one line each, no bar
    quiet = Reporter(quiet=True)
    quiet.info("hidden")
    with quiet.progress("features", 3) as tick:
        tick()
    quiet.warn("shown")
    assert capsys.readouterr().err == "warning: shown\n"


def test_sample_stderr_has_messages_but_no_bars_and_nothing_when_quiet(models, tmp_path):
    loud = run("sample", models["unet"], "--num", 2, "--ddim", 2, "-b", 1, "--out", tmp_path / "a.npz")
    assert loud.exit_code == 0, err(loud)
    text = err(loud)
    assert text.strip() and all(mark not in text for mark in BAR_MARKS), repr(text)
    quiet = run("sample", models["unet"], "--num", 2, "--ddim", 2, "-b", 1, "--out", tmp_path / "b.npz", "--quiet")
    assert quiet.exit_code == 0 and err(quiet).strip() in ("", quiet.stdout.strip())
    assert quiet.stdout.strip() == str(tmp_path / "b.npz")
