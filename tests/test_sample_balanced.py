"""`adm sample --classes balanced`: exactly N/K images per class, labels a function of (seed, K, i)
alone (batch size, resumption, sharding), stored in the sample file and in its resume identity."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.cli.app import app
from adm_cli.data.samples import SampleFileError, read_samples
from adm_cli.generate import GenerateError, SampleOptions, balanced_labels, fingerprint, run_sampling
from tests.conftest import TINY_UNET, write_unet
from tests.sample_helpers import kill_when_ready

CPU = make_backend("cpu", "fp32")
K = TINY_UNET.num_classes  # 4
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def sample_file(ckpt: Path, out: Path, *, classifier: Path | None = None, **kw) -> Path:
    opts = dict(num=8, respacing="2", seed=3, batch_size=3, classes="balanced")
    opts.update(kw)
    clf = load_model(classifier) if classifier is not None else None
    return run_sampling(load_model(ckpt), out, SampleOptions(**opts), backend=CPU, classifier=clf)


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(read_samples(path)[1])


@pytest.fixture(scope="module")
def uncond(tmp_path_factory) -> Path:
    return write_unet(tmp_path_factory.mktemp("uncond") / "uncond.pt", dataclasses.replace(TINY_UNET, num_classes=None))


# ---- the labels as a pure function


def test_each_block_of_k_images_holds_every_class_once():
    labels = balanced_labels(range(60), num_classes=5, seed=0)
    assert labels.dtype == torch.int64
    assert torch.equal(torch.bincount(labels), torch.full((5,), 12))
    for b in range(12):  # so every prefix of m·K images is balanced too
        assert sorted(labels[5 * b: 5 * b + 5].tolist()) == list(range(5))


@pytest.mark.parametrize("cuts", [[0, 1, 2, 3, 40], [0, 7, 8, 9, 23, 40], [0, 13, 27, 40]])
def test_any_split_into_chunks_gives_the_same_labels(cuts):
    """Batches, resumption points and torchrun shards are contiguous ranges of image indices."""
    whole = balanced_labels(range(40), num_classes=4, seed=7)
    parts = [balanced_labels(range(a, b), num_classes=4, seed=7) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat(parts), whole)


def test_the_seed_sets_the_order():
    a, b = (balanced_labels(range(40), num_classes=4, seed=s) for s in (0, 1))
    assert not torch.equal(a, b)
    assert torch.equal(torch.bincount(a), torch.bincount(b))
    assert torch.equal(balanced_labels(range(40), num_classes=4, seed=0), a)


# ---- sample files


def test_file_counts_and_batch_size_independence(models, tmp_path):
    one = sample_file(models["unet"], tmp_path / "one.npz", batch_size=1)
    three = sample_file(models["unet"], tmp_path / "three.h5", batch_size=3)
    (i1, l1), (i3, l3) = read_samples(one), read_samples(three)
    assert np.array_equal(l1, l3) and l1.dtype == np.int64
    assert np.bincount(l1, minlength=K).tolist() == [8 // K] * K
    assert np.array_equal(l1, balanced_labels(range(8), num_classes=K, seed=3).numpy())
    assert np.abs(np.asarray(i1).astype(int) - np.asarray(i3).astype(int)).max() <= 1
    with np.load(one) as d:
        assert np.array_equal(d["arr_1"], l1)  # the evaluator's arr_1


def test_balanced_image_is_the_fixed_class_image(models, tmp_path):
    """Balanced labels draw nothing from the image generators: image i is what --class (its label) gives."""
    images, labels = read_samples(sample_file(models["unet"], tmp_path / "b.npz", num=4, batch_size=4))
    c = int(labels[2])
    fixed, _ = read_samples(sample_file(models["unet"], tmp_path / "c.npz", num=3, batch_size=3, classes="random",
                                        class_label=c))
    assert np.abs(np.asarray(images)[2].astype(int) - np.asarray(fixed)[2].astype(int)).max() <= 1


def test_interrupted_run_resumes_with_the_same_labels(models, tmp_path, monkeypatch):
    import adm_cli.generate.sampling as gen

    full = labels_of(sample_file(models["unet"], tmp_path / "full.npz", batch_size=2))
    original, calls = gen._sample_range, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    out = tmp_path / "resumed.npz"
    monkeypatch.setattr(gen, "_sample_range", dying)
    with pytest.raises(KeyboardInterrupt):
        sample_file(models["unet"], out, batch_size=2)
    monkeypatch.setattr(gen, "_sample_range", original)
    assert not out.exists() and len(list(Path(f"{out}.partial").glob("img_*.npy"))) == 2
    with pytest.raises(SampleFileError, match="different run"):  # the label mode is part of the resume identity
        sample_file(models["unet"], out, batch_size=2, classes="random")
    assert np.array_equal(labels_of(sample_file(models["unet"], out, batch_size=3)), full)  # batch size may change


def test_killed_process_resumes_with_the_same_labels(models, tmp_path):
    """A real SIGKILL in the middle of `adm sample --classes balanced`, then the same command again."""
    out = tmp_path / "s.npz"
    cmd = [sys.executable, "-m", "adm_cli", "sample", str(models["unet"]), "--classes", "balanced", "-n", "8",
           "-b", "1", "--steps", "3", "--seed", "5", "--out", str(out), "--quiet", "--device", "cpu"]
    kill_when_ready(cmd, lambda: len(list(Path(f"{out}.partial").glob("img_*.npy"))) >= 2)
    subprocess.run(cmd, check=True, capture_output=True)
    assert np.array_equal(labels_of(out), balanced_labels(range(8), num_classes=K, seed=5).numpy())


def test_fingerprint_records_balanced_only(models):
    """Random classes leave the fingerprint as it was before --classes, so older partial files resume."""
    model = load_model(models["unet"])
    plain = json.loads(fingerprint(model, None, SampleOptions(num=8), CPU))["options"]
    balanced = json.loads(fingerprint(model, None, SampleOptions(num=8, classes="balanced"), CPU))["options"]
    assert "classes" not in plain and balanced["classes"] == "balanced"


def test_unconditional_model_balances_the_classifiers_classes(uncond, models, tmp_path):
    out = sample_file(uncond, tmp_path / "g.npz", classifier=models["classifier"], guidance_scale=1.0, num=4,
                      batch_size=4)
    labels = labels_of(out)
    assert sorted(labels.tolist()) == list(range(K))  # the classifier's K classes, once each
    assert np.array_equal(labels, balanced_labels(range(4), num_classes=K, seed=3).numpy())


def test_upsample_carries_a_balanced_base_batchs_labels(tmp_path):
    small = write_unet(tmp_path / "small.pt", dataclasses.replace(TINY_UNET, image_size=8, attention_resolutions=(4,)))
    sr = write_unet(tmp_path / "sr.pt", dataclasses.replace(TINY_UNET, low_res_size=8))
    base = sample_file(small, tmp_path / "base.npz", num=4, batch_size=4)
    result = run("upsample", sr, "--base", base, "--out", tmp_path / "up.npz", "--steps", 2, "-b", 4, "-q",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.array_equal(labels_of(tmp_path / "up.npz"), labels_of(base))


# ---- bad input: one line, exit 2, nothing written


BAD = {  # case: (model, options, what the error line says)
    "unconditional, no classifier": ("uncond", ["--classes", "balanced", "-n", 8],
                                     "--classes balanced needs a class-conditional model or a classifier"),
    "num not divisible": ("unet", ["--classes", "balanced", "-n", 10],
                          "divisible by the 4 classes, got 10; use --num 8 or --num 12"),
    "num below K": ("unet", ["--classes", "balanced", "-n", 3], "got 3; use --num 4"),
    "with --class": ("unet", ["--classes", "balanced", "--class", 1, "-n", 8], "drop it or --class 1"),
    "unknown mode": ("unet", ["--classes", "even", "-n", 8], "'even' is not one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2_nothing_written(models, uncond, tmp_path, case):
    which, args, needle = BAD[case]
    ckpt = uncond if which == "uncond" else models["unet"]
    result = run("sample", ckpt, *args, "--steps", 2, "--out", tmp_path / "a.npz", "--device", "cpu")
    err = (getattr(result, "stderr", None) or result.output).strip()
    assert result.exit_code == 2, (case, result.output, result.exception)
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_library_refuses_balanced_with_a_fixed_class():
    with pytest.raises(GenerateError, match="drop it or --class 2"):
        SampleOptions(num=8, classes="balanced", class_label=2)
