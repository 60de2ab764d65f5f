"""`adm upsample`: labels and count kept, conditioning reaches the model, batch-size independence,
resume after a kill, bad base batches, OpenAI upsampler state dicts."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.cli.app import app
from adm_cli.data.samples import read_samples, sample_info
from adm_cli.generate import SampleOptions
from adm_cli.nn import build_unet
from adm_cli.data.batches import to_model_input
from adm_cli.generate.upsample import check_base, run_upsampling
from tests.conftest import TINY_UNET, randomized, write_unet
from tests.golden_weights import deterministic_state_dict
from tests.sample_helpers import kill_when_ready

runner = CliRunner()
SR_UNET = dataclasses.replace(TINY_UNET, low_res_size=8)  # 8 -> 16, 4 classes, 3 channels
SR_UNCOND = dataclasses.replace(SR_UNET, num_classes=None)


@pytest.fixture(scope="module")
def sr(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sr")
    return {"cond": write_unet(root / "sr.pt", SR_UNET), "uncond": write_unet(root / "sr_uncond.pt", SR_UNCOND)}


def base_batch(path: Path, n: int = 5, size: int = 8, channels: int = 3, labels=True, seed: int = 0) -> Path:
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    arrays = {"arr_0": images}
    if labels is True:
        arrays["arr_1"] = np.arange(n, dtype=np.int64) % 4
    elif labels is not None:
        arrays["arr_1"] = np.asarray(labels, np.int64)
    np.savez(path, **arrays)
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def upsample_file(ckpt: Path, base: Path, out: Path, *, num=None, batch_size=2, class_label=None, seed=0, respacing="5"):
    model = load_model(ckpt)
    num = sample_info(base)[0] if num is None else num
    options = SampleOptions(num=num, respacing=respacing, class_label=class_label, seed=seed, batch_size=batch_size)
    return run_upsampling(model, check_base(model, base, options), out, options, backend=make_backend("cpu", "fp32"))


def test_upsampling_keeps_labels_and_count(sr, tmp_path):
    base = base_batch(tmp_path / "base.npz", n=5)
    result = run("upsample", sr["cond"], "--base", base, "--out", tmp_path / "up.npz", "--steps", 5, "-b", 2, "-q")
    assert result.exit_code == 0, result.output
    images, labels = read_samples(tmp_path / "up.npz")
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, np.arange(5) % 4)


def test_num_takes_the_first_images_and_h5_output(sr, tmp_path):
    base = base_batch(tmp_path / "base.npz", n=5)
    out = upsample_file(sr["cond"], base, tmp_path / "up.h5", num=3)
    with h5py.File(out) as f:
        assert f["images"].shape == (3, 16, 16, 3)
        assert list(f["labels"][...]) == [0, 1, 2]
    first = read_samples(upsample_file(sr["cond"], base, tmp_path / "all.npz"))[0]
    assert np.array_equal(read_samples(out)[0], first[:3])  # image i depends on seed + i only


def test_an_image_folder_is_a_base_batch(sr, tmp_path):
    from PIL import Image

    base = base_batch(tmp_path / "base.npz", n=3, labels=None)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, im in enumerate(np.load(base)["arr_0"]):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    from_npz = read_samples(upsample_file(sr["cond"], base, tmp_path / "a.npz", class_label=1))
    from_folder = read_samples(upsample_file(sr["cond"], folder, tmp_path / "b.npz", class_label=1))
    assert np.array_equal(from_npz[0], from_folder[0]) and list(from_folder[1]) == [1, 1, 1]


def test_batch_size_does_not_change_the_images(sr, tmp_path):
    base = base_batch(tmp_path / "base.npz", n=5)
    a = read_samples(upsample_file(sr["cond"], base, tmp_path / "a.npz", batch_size=2))[0]
    b = read_samples(upsample_file(sr["cond"], base, tmp_path / "b.npz", batch_size=5))[0]
    assert np.array_equal(a, b)


def test_each_output_follows_its_own_base_image_and_label(sr, tmp_path):
    base = base_batch(tmp_path / "base.npz", n=4)
    images = np.load(base)["arr_0"].copy()
    images[2] = 255 - images[2]
    np.savez(tmp_path / "other.npz", arr_0=images, arr_1=np.arange(4) % 4)
    relabelled = tmp_path / "relabelled.npz"
    np.savez(relabelled, arr_0=np.load(base)["arr_0"], arr_1=np.array([0, 3, 2, 3]))
    ref = read_samples(upsample_file(sr["cond"], base, tmp_path / "ref.npz"))[0].astype(int)
    other = read_samples(upsample_file(sr["cond"], tmp_path / "other.npz", tmp_path / "o.npz"))[0].astype(int)
    rel = read_samples(upsample_file(sr["cond"], relabelled, tmp_path / "r.npz"))[0].astype(int)
    changed = [i for i in range(4) if np.abs(ref[i] - other[i]).max() > 0]
    assert changed == [2]
    relabelled_changed = [i for i in range(4) if np.abs(ref[i] - rel[i]).max() > 0]
    assert relabelled_changed == [1]


def test_low_res_scaling_is_guided_diffusions():
    x = np.array([[[[0], [255]], [[127], [128]]]], dtype=np.uint8)  # (1, 2, 2, 1)
    t = to_model_input(x)
    assert t.shape == (1, 1, 2, 2)
    torch.testing.assert_close(t[0, 0], torch.tensor([[-1.0, 1.0], [127 / 127.5 - 1, 128 / 127.5 - 1]]))


def test_unconditional_upsampler_carries_labels_and_class_fills_missing_ones(sr, tmp_path):
    base = base_batch(tmp_path / "base.npz", n=3)
    images, labels = read_samples(upsample_file(sr["uncond"], base, tmp_path / "u.npz"))
    assert np.array_equal(labels, [0, 1, 2])
    bare = base_batch(tmp_path / "bare.npz", n=3, labels=None)
    _, labels = read_samples(upsample_file(sr["cond"], bare, tmp_path / "c.npz", class_label=3))
    assert np.array_equal(labels, [3, 3, 3])


def test_interrupted_upsampling_resumes_to_the_same_file(sr, tmp_path, monkeypatch):
    import adm_cli.generate.upsample as up

    base = base_batch(tmp_path / "base.npz", n=6)
    full = read_samples(upsample_file(sr["cond"], base, tmp_path / "full.npz"))
    original, calls = up.sample_batch, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(up, "sample_batch", dying)
    out = tmp_path / "resumed.npz"
    with pytest.raises(KeyboardInterrupt):
        upsample_file(sr["cond"], base, out)
    assert not out.exists() and (tmp_path / "resumed.npz.partial").is_dir()
    monkeypatch.setattr(up, "sample_batch", original)
    resumed = read_samples(upsample_file(sr["cond"], base, out))
    assert np.array_equal(resumed[0], full[0]) and np.array_equal(resumed[1], full[1])


def test_a_partial_run_does_not_mix_with_another_base_batch(sr, tmp_path, monkeypatch):
    import adm_cli.generate.upsample as up
    from adm_cli.data.samples import SampleFileError

    base = base_batch(tmp_path / "base.npz", n=6)
    out = tmp_path / "mixed.npz"
    monkeypatch.setattr(up, "sample_batch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        upsample_file(sr["cond"], base, out)
    monkeypatch.undo()
    with pytest.raises(SampleFileError, match="different run"):
        upsample_file(sr["cond"], base_batch(tmp_path / "other.npz", n=6, seed=5), out)


def test_killed_process_resumes(sr, tmp_path):
    """A real SIGKILL in the middle of `adm upsample`, then the same command again."""
    base = base_batch(tmp_path / "base.npz", n=10)
    out = tmp_path / "up.npz"
    # 50 steps a chunk: slow enough that the kill lands before the fifth chunk on a fast machine too
    cmd = [sys.executable, "-m", "adm_cli", "upsample", str(sr["cond"]), "--base", str(base), "--batch-size", "2",
           "--steps", "50", "--out", str(out), "--quiet", "--device", "cpu"]
    partial = Path(str(out) + ".partial")
    kill_when_ready(cmd, lambda: partial.is_dir() and len(list(partial.glob("img_*.npy"))) >= 1)
    subprocess.run(cmd, check=True, capture_output=True)
    clean = tmp_path / "clean.npz"
    subprocess.run([*cmd[: cmd.index("--out")], "--out", str(clean), "--quiet"], check=True, capture_output=True)
    a, la = read_samples(out)
    b, lb = read_samples(clean)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(la, lb) and len(a) == 10


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: base_batch(p, size=16), [], "base images are 16x16, the model upsamples 8x8 to 16x16"),
        (lambda p: base_batch(p, channels=1), [], "1 channels, the model takes 3"),
        (lambda p: base_batch(p, labels=[0, 1, 2, 3, 4]), [], "labels span [0, 4], the upsampler has 4 classes"),
        (lambda p: base_batch(p, labels=None), [], "has no labels"),
        (lambda p: base_batch(p), ["--class", 1], "--class would override them"),
        (lambda p: base_batch(p, labels=None), ["--class", 4], "--class 4 is out of range"),
        (lambda p: base_batch(p), ["--num", 6], "--num 6 is out of range"),
        (lambda p: base_batch(p), ["--sampler", "euler", "--steps", 5], "--sampler must be one of"),
        (lambda p: base_batch(p), ["--respacing", "2000"], "--respacing"),
        (lambda p: p.write_bytes(b"not a zip") and p, [], "base.npz"),
        (lambda p: np.savez(p, arr_0=np.zeros((0, 8, 8, 3), np.uint8)), [], "the base batch is empty"),
    ],
)
def test_bad_base_batches_get_one_line(sr, tmp_path, make, extra, message):
    base = tmp_path / "base.npz"
    make(base)
    out = tmp_path / "up.npz"
    result = run("upsample", sr["cond"], "--base", base, "--out", out, "-q", *extra)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_wrong_checkpoint_kind_missing_base_and_same_file(sr, models, tmp_path):
    base = base_batch(tmp_path / "base.npz")
    result = run("upsample", models["unet"], "--base", base, "--out", tmp_path / "o.npz")
    assert result.exit_code == 2 and "is a diffusion checkpoint, expected super-res" in result.stderr
    result = run("upsample", sr["cond"], "--base", tmp_path / "none.npz", "--out", tmp_path / "o.npz")
    assert result.exit_code == 2 and "base batch not found" in result.stderr
    result = run("upsample", sr["cond"], "--base", base, "--out", base)
    assert result.exit_code == 2 and "--out must differ from --base" in result.stderr
    assert np.load(base)["arr_0"].shape == (5, 8, 8, 3)  # untouched


def test_adm_sample_of_a_super_res_model_points_to_upsample(sr, tmp_path):
    result = run("sample", sr["cond"], "--out", tmp_path / "s.npz")
    assert result.exit_code == 2 and "adm upsample" in result.stderr


# --- OpenAI state dicts: guided-diffusion names, no adm metadata


def test_bare_state_dict_of_a_custom_upsampler_runs_with_flags(tmp_path):
    model = randomized(build_unet(SR_UNET))
    path = tmp_path / "bare_sr.pt"
    torch.save(model.state_dict(), path)
    base = base_batch(tmp_path / "base.npz", n=2)
    flags = ["--image-size", 16, "--num-head-channels", 16, "--schedule", "linear", "--diffusion-steps", 100]
    result = run("upsample", path, "--base", base, "--out", tmp_path / "up.npz", "--steps", 3, "-q", *flags)
    assert result.exit_code == 2 and "give its input size with --low-res-size" in result.stderr
    flags += ["--low-res-size", 8]
    result = run("upsample", path, "--base", base, "--out", tmp_path / "up.npz", "--steps", 3, "-q", *flags)
    assert result.exit_code == 0, result.stderr
    images, labels = read_samples(tmp_path / "up.npz")
    assert images.shape == (2, 16, 16, 3) and list(labels) == [0, 1]
    # the same weights saved by adm give the same images
    ours = write_unet(tmp_path / "ours.pt", SR_UNET, dataclasses.replace(load_model(path, overrides=dict(
        image_size=16, num_head_channels=16, schedule="linear", steps=100, low_res_size=8)).diffusion))
    result = run("upsample", ours, "--base", base, "--out", tmp_path / "up2.npz", "--steps", 3, "-q")
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(read_samples(tmp_path / "up2.npz")[0], images)


SHAPES_FILE = Path(__file__).parent.parent / "assets/golden/openai/shapes.json.gz"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "small", "large"), [("64_256_upsampler.pt", 64, 256), ("128_512_upsampler.pt", 128, 512)])
def test_published_upsampler_state_dicts_load_with_no_flags_and_run(tmp_path, name, small, large):
    """Random weights under the published files' names and shapes (~300M parameters): loaded by
    structure alone, then one DDIM step on one image."""
    shapes = json.loads(gzip.open(SHAPES_FILE, "rt").read())[name]
    path = tmp_path / name
    torch.save(deterministic_state_dict({k: tuple(v) for k, v in shapes.items()}), path)
    base = tmp_path / "base.npz"
    np.savez(base, arr_0=np.full((1, small, small, 3), 128, np.uint8), arr_1=np.array([207]))
    result = run("upsample", path, "--base", base, "--out", tmp_path / "up.npz", "--ddim", 1, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    images, labels = read_samples(tmp_path / "up.npz")
    assert images.shape == (1, large, large, 3) and list(labels) == [207]


def test_torchrun_two_processes_write_the_single_process_file(sr, tmp_path):
    """torch.distributed (gloo, CPU): each rank reads its share of every base chunk; one identical file."""
    base = base_batch(tmp_path / "base.npz", n=5)
    args = ["upsample", str(sr["cond"]), "--base", str(base), "--batch-size", "2", "--steps", "4", "--quiet", "--device", "cpu"]
    single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
    subprocess.run([sys.executable, "-m", "adm_cli", *args, "--out", str(single)], check=True, capture_output=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adm_cli", *args, "--out", str(multi)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (a, la), (b, lb) = read_samples(single), read_samples(multi)
    assert np.array_equal(la, lb) and np.array_equal(la, np.arange(5) % 4)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_classifier_free_guidance_and_a_fast_solver_in_upsample(tmp_path):
    """A super-resolution model with a null class takes --cfg-scale (the low-res input goes to both
    halves of the doubled batch); batch size does not change the images; without a null class it
    is refused."""
    cfg_sr = write_unet(tmp_path / "sr_cfg.pt", dataclasses.replace(SR_UNET, null_class=True))
    base = base_batch(tmp_path / "base.npz", n=3)
    outs = {}
    for name, extra in (("plain", []), ("cfg", ["--cfg-scale", 2]), ("cfg_b1", ["--cfg-scale", 2, "-b", 1])):
        out = tmp_path / f"{name}.npz"
        result = run("upsample", cfg_sr, "--base", base, "--out", out, "--sampler", "unipc", "--nfe", 4, "-q", *extra)
        assert result.exit_code == 0, result.output
        outs[name] = read_samples(out)
    assert np.array_equal(outs["cfg"][1], [0, 1, 2])
    assert not np.array_equal(outs["cfg"][0], outs["plain"][0])
    assert np.abs(outs["cfg"][0].astype(int) - outs["cfg_b1"][0].astype(int)).max() <= 1
    refused = run("upsample", write_unet(tmp_path / "sr.pt", SR_UNET), "--base", base, "--out", tmp_path / "x.npz",
                  "--cfg-scale", 2, "--nfe", 4, "--sampler", "ddim")
    assert refused.exit_code == 2 and "null class" in refused.output and not (tmp_path / "x.npz").exists()
