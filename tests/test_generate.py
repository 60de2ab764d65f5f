"""Sampling: determinism, batch-size independence, explicit x_T, resume after a kill, guidance."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.generate import GenerateError, SampleOptions, run_sampling, sample_images
from tests.sample_helpers import kill_when_ready

CPU = make_backend("cpu", "fp32")


def sample_file(models, out, **kw):
    opts = dict(num=5, respacing="8", seed=3, batch_size=2)
    opts.update(kw)
    classifier = load_model(models["classifier"]) if opts.pop("guided", False) else None
    return run_sampling(load_model(models["unet"]), out, SampleOptions(**opts), backend=CPU, classifier=classifier)


def read(path):
    with np.load(path) as d:
        return d["arr_0"], d["arr_1"]


def test_same_seed_same_images_and_other_seed_differs(models, tmp_path):
    a, la = read(sample_file(models, tmp_path / "a.npz"))
    b, lb = read(sample_file(models, tmp_path / "b.npz"))
    c, _ = read(sample_file(models, tmp_path / "c.npz", seed=4))
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8 and la.dtype == np.int64
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("sampler,respacing,eta", [("ddpm", "8", 0.0), ("ddim", "ddim10", 0.5)])
def test_image_i_depends_only_on_seed_plus_i(models, tmp_path, sampler, respacing, eta):
    kw = dict(sampler=sampler, respacing=respacing, eta=eta)
    one, l1 = read(sample_file(models, tmp_path / "one.npz", batch_size=1, **kw))
    many, l5 = read(sample_file(models, tmp_path / "many.npz", batch_size=5, **kw))
    assert np.array_equal(l1, l5)
    assert np.abs(one.astype(int) - many.astype(int)).max() <= 1  # uint8 rounding of ~1e-6 differences
    # image 2 with seed 3 is image 0 with seed 5
    shifted, _ = read(sample_file(models, tmp_path / "shift.npz", num=1, seed=5, **kw))
    assert np.abs(shifted[0].astype(int) - many[2].astype(int)).max() <= 1


def test_explicit_x_T_and_ddim_is_deterministic(models):
    model = load_model(models["unet"])
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, _ = sample_images(model, 2, sampler="ddim", respacing="ddim10", x_T=x_T, labels=torch.tensor([0, 1]), seed=0)
    b, _ = sample_images(model, 2, sampler="ddim", respacing="ddim10", x_T=x_T, labels=torch.tensor([0, 1]), seed=99)
    assert torch.equal(a, b)  # η = 0: the seed only matters through x_T
    c, _ = sample_images(model, 2, sampler="ddim", respacing="ddim10", labels=torch.tensor([0, 1]), seed=0)
    assert not torch.equal(a, c)
    with pytest.raises(GenerateError, match="x_T has shape"):
        sample_images(model, 3, x_T=x_T)


def test_fixed_class(models, tmp_path):
    _, labels = read(sample_file(models, tmp_path / "c.npz", class_label=2))
    assert (labels == 2).all()


def test_classifier_guidance_moves_samples_towards_the_class(models):
    model, clf = load_model(models["unet"]), load_model(models["classifier"])
    target = 1
    labels = torch.full((8,), target)
    common = dict(sampler="ddim", respacing="ddim10", labels=labels, seed=0, classifier=clf)
    plain, _ = sample_images(model, 8, guidance_scale=0.0, **common)
    guided, _ = sample_images(model, 8, guidance_scale=30.0, **common)
    t0 = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        p_plain = clf.model(plain, t0).log_softmax(-1)[:, target].mean()
        p_guided = clf.model(guided, t0).log_softmax(-1)[:, target].mean()
    assert p_guided > p_plain + 0.1


def test_guidance_changes_nothing_at_scale_zero(models, tmp_path):
    a, _ = read(sample_file(models, tmp_path / "a.npz"))
    b, _ = read(sample_file(models, tmp_path / "b.npz", guided=True, guidance_scale=0.0))
    assert np.array_equal(a, b)


def interrupt_second_batch(models, out, **kw):
    """Run sample_file and die (KeyboardInterrupt) while the second batch is being sampled."""
    import adm_cli.generate.sampling as gen

    original = gen._sample_range
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    gen._sample_range = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            sample_file(models, out, **kw)
    finally:
        gen._sample_range = original


def test_interrupted_run_resumes_without_duplicates(models, tmp_path):
    full, lfull = read(sample_file(models, tmp_path / "full.npz", num=6))
    out = tmp_path / "resumed.npz"
    interrupt_second_batch(models, out, num=6)
    assert not out.exists() and (tmp_path / "resumed.npz.partial").is_dir()
    resumed, lres = read(sample_file(models, out, num=6))
    assert np.array_equal(resumed, full) and np.array_equal(lres, lfull)
    assert not (tmp_path / "resumed.npz.partial").exists()


def test_finished_output_is_not_overwritten(models, tmp_path):
    from adm_cli.data.samples import SampleFileError

    out = sample_file(models, tmp_path / "a.npz")
    before = out.read_bytes()
    with pytest.raises(SampleFileError, match="exists"):
        sample_file(models, out, seed=9)
    assert out.read_bytes() == before


def test_changed_options_do_not_mix_with_a_partial_run(models, tmp_path):
    from adm_cli.data.samples import SampleFileError

    out = tmp_path / "x.npz"
    interrupt_second_batch(models, out, num=6)
    with pytest.raises(SampleFileError, match="different run"):
        sample_file(models, out, num=6, seed=11)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_killed_process_resumes(models, tmp_path, suffix):
    """A real SIGKILL in the middle of `adm sample`, then the same command again."""
    out = tmp_path / f"s{suffix}"
    cmd = [sys.executable, "-m", "adm_cli", "sample", str(models["unet"]), "--num", "12", "--batch-size", "2",
           "--steps", "10", "--seed", "1", "--out", str(out), "--quiet", "--device", "cpu"]
    partial = Path(str(out) + (".partial" if suffix == ".npz" else ".partial.h5"))

    def ready() -> bool:
        if suffix == ".npz":
            return partial.is_dir() and len(list(partial.glob("img_*.npy"))) >= 2
        return partial.exists() and time.time() - partial.stat().st_mtime < 5 and partial.stat().st_size > 4000

    kill_when_ready(cmd, ready)
    subprocess.run(cmd, check=True, capture_output=True)
    clean = tmp_path / f"clean{suffix}"
    subprocess.run([*cmd[: cmd.index("--out")], "--out", str(clean), "--quiet"], check=True, capture_output=True)
    from adm_cli.data.samples import read_samples

    a, la = read_samples(out)
    b, lb = read_samples(clean)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(la, lb)


def test_torchrun_two_processes_write_the_single_process_file(models, tmp_path):
    """torch.distributed (gloo, CPU): ranks split the images, rank 0 writes one identical file."""
    single = tmp_path / "single.npz"
    # `-n`, not `--num`: torchrun's own parser would take `--num` for an abbreviation of --numa-binding.
    args = ["sample", str(models["unet"]), "-n", "5", "--batch-size", "2", "--steps", "4", "--seed", "2",
            "--quiet", "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "adm_cli", *args, "--out", str(single)], check=True, capture_output=True)
    multi = tmp_path / "multi.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "adm_cli", *args, "--out", str(multi)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = read(single), read(multi)
    assert np.array_equal(a[1], b[1])
    assert np.abs(a[0].astype(int) - b[0].astype(int)).max() <= 1


def test_bf16_weights_cast_once_give_autocasts_samples(models):
    """Conv/linear weights stored in bf16 (the default for bf16 sampling) multiply exactly as
    autocast's per-call casts do; norms and embeddings stay float32. With guidance too."""
    from adm_cli.backend import make_backend

    kw = dict(sampler="ddim", respacing="ddim5", labels=torch.tensor([0, 1, 2]), seed=0, guidance_scale=1.0)
    out = {}
    for cast in (False, True):
        backend = make_backend("cpu", "bf16", cast_weights=cast)
        model, clf = load_model(models["unet"]), load_model(models["classifier"])
        out[cast], _ = sample_images(model, 3, backend=backend, classifier=clf, **kw)
        dtypes = {name: p.dtype for name, p in model.model.named_parameters()}
        assert (dtypes["input_blocks.0.0.weight"] == torch.bfloat16) is cast
        assert dtypes["out.0.weight"] == torch.float32  # GroupNorm
    torch.testing.assert_close(out[True], out[False], rtol=0, atol=1e-6)
