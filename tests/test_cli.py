"""The command line: every command answers --help, bad input gets one line and exit code 2."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adm_cli.cli.app import app
from adm_cli.config import ClassifierConfig, DiffusionConfig
from tests.conftest import TINY_CLASSIFIER, TINY_DIFFUSION, write_classifier

runner = CliRunner()
COMMANDS = ["sample", "info", "train-diffusion", "train-classifier", "upsample", "interpolate", "evaluate", "ref-batch", "plot"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def stderr_of(result):
    return getattr(result, "stderr", None) or result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_sample_help_has_examples():
    assert "--guidance 1.0" in run("sample", "--help").output


@pytest.mark.parametrize(("command", "example"), [("upsample", "--base small.npz"), ("interpolate", "--mode noise --t 500")])
def test_upsample_and_interpolate_help_has_examples(command, example):
    assert example in run(command, "--help").output


def test_sample_then_info(models, tmp_path):
    out, grid = tmp_path / "s.npz", tmp_path / "g.png"
    result = run("sample", models["unet"], "--num", 3, "--ddim", 5, "--out", out, "--grid", grid, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    with np.load(out) as d:
        assert d["arr_0"].shape == (3, 16, 16, 3) and d["arr_1"].shape == (3,)
    assert grid.stat().st_size > 0
    info = run("info", models["unet"], "--json")
    assert info.exit_code == 0
    record = json.loads(info.stdout)
    assert record["kind"] == "diffusion" and record["step"] == 7 and record["config"]["image_size"] == 16


def test_sample_h5_with_guidance(models, tmp_path):
    import h5py

    out = tmp_path / "s.h5"
    result = run("sample", models["unet"], "--num", 2, "--steps", 5, "--classifier", models["classifier"],
                 "--guidance", 2, "--class", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["images"].shape == (2, 16, 16, 3) and list(f["labels"][:]) == [1, 1]
        assert "--guidance" in f.attrs["command"]


@pytest.fixture(scope="module")
def wrong_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrong")
    size32 = ClassifierConfig(**{**TINY_CLASSIFIER.to_dict(), "image_size": 32, "attention_resolutions": (16,)})
    classes7 = ClassifierConfig(**{**TINY_CLASSIFIER.to_dict(), "num_classes": 7})
    cosine = DiffusionConfig(**{**TINY_DIFFUSION.to_dict(), "schedule": "cosine"})
    return (
        write_classifier(root / "c32.pt", size32),
        write_classifier(root / "c7.pt", classes7),
        write_classifier(root / "cosine.pt", diffusion=cosine),
    )


def bad_inputs(models, wrong, tmp):
    (tmp / "junk.pt").write_bytes(b"garbage")
    (tmp / "file.txt").write_text("x")
    ok = ["--num", 2, "--steps", 5]
    return {
        "missing checkpoint": (["sample", tmp / "nope.pt", "--out", tmp / "a.npz"], "not found"),
        "corrupt checkpoint": (["sample", tmp / "junk.pt", "--out", tmp / "a.npz"], "not a readable"),
        "classifier as model": (["sample", models["classifier"], "--out", tmp / "a.npz"], "expected diffusion"),
        "classifier size": (["sample", models["unet"], *ok, "--classifier", wrong[0], "--out", tmp / "a.npz"], "32x32"),
        "classifier classes": (["sample", models["unet"], *ok, "--classifier", wrong[1], "--out", tmp / "a.npz"], "7 classes"),
        "classifier schedule": (["sample", models["unet"], *ok, "--classifier", wrong[2], "--out", tmp / "a.npz"], "cosine 100-step"),
        "impossible respacing": (["sample", models["unet"], "--respacing", "ddim40", "--out", tmp / "a.npz"], "ddim40"),
        "too many steps": (["sample", models["unet"], "--steps", 500, "--out", tmp / "a.npz"], "500"),
        "bad sections": (["sample", models["unet"], "--respacing", "60,60", "--out", tmp / "a.npz"], "--respacing"),
        "class out of range": (["sample", models["unet"], *ok, "--class", 4, "--out", tmp / "a.npz"], "out of range"),
        "two step options": (["sample", models["unet"], "--ddim", 5, "--steps", 5, "--out", tmp / "a.npz"], "one of"),
        "bad extension": (["sample", models["unet"], *ok, "--out", tmp / "a.png"], ".npz or .h5"),
        "unwritable output": (["sample", models["unet"], *ok, "--out", tmp / "file.txt" / "a.npz"], "file.txt"),
        "negative num": (["sample", models["unet"], "--num", -1, "--out", tmp / "a.npz"], "--num"),
        "cuda missing": (["sample", models["unet"], *ok, "--device", "cuda", "--out", tmp / "a.npz"], "CUDA"),
        "eta with ddpm": (["sample", models["unet"], *ok, "--eta", 0.5, "--out", tmp / "a.npz"], "--eta"),
        "info on junk": (["info", tmp / "junk.pt"], "not a readable"),
        "guidance without classifier": (["sample", models["unet"], *ok, "--guidance", 3, "--out", tmp / "a.npz"], "--guidance needs --classifier"),
        "unknown sampler": (["sample", models["unet"], "--sampler", "euler", "--out", tmp / "a.npz"], "--sampler must be one of"),
        "unknown spacing": (["sample", models["unet"], "--sampler", "dpm++2m", "--spacing", "cubic", "--out", tmp / "a.npz"], "--spacing must be one of"),
        "nfe too small": (["sample", models["unet"], "--sampler", "dpm++3m", "--nfe", 2, "--out", tmp / "a.npz"], "needs at least 3"),
        "heun steps too few": (["sample", models["unet"], "--sampler", "heun", "--steps", 1, "--out", tmp / "a.npz"], "too few for heun"),
        "eta with a solver": (["sample", models["unet"], "--sampler", "unipc", "--eta", 0.5, "--out", tmp / "a.npz"], "deterministic"),
        "cfg without null class": (["sample", models["unet"], *ok, "--cfg-scale", 2, "--out", tmp / "a.npz"], "null class"),
        "nan eta": (["sample", models["unet"], "--ddim", 5, "--eta", "nan", "--out", tmp / "a.npz"], "finite"),
        "nan guidance": (["sample", models["unet"], *ok, "--classifier", models["classifier"], "--guidance", "nan", "--out", tmp / "a.npz"], "finite"),
        "threshold without clipping": (["sample", models["unet"], *ok, "--dynamic-threshold", "--no-clip", "--out", tmp / "a.npz"], "--no-clip"),
        "spacing with respacing": (["sample", models["unet"], "--respacing", "10", "--spacing", "logsnr", "--out", tmp / "a.npz"], "drop --spacing"),
        "spacing without steps": (["sample", models["unet"], "--spacing", "logsnr", "--out", tmp / "a.npz"], "needs a step count"),
        "ddim with another sampler": (["sample", models["unet"], "--ddim", 5, "--sampler", "heun", "--out", tmp / "a.npz"], "drop --sampler heun"),
        "bad guidance interval": (["sample", models["unet"], *ok, "--guidance-interval", "9,2", "--out", tmp / "a.npz"], "LO <= HI"),
        "nfe and steps": (["sample", models["unet"], "--nfe", 5, "--steps", 5, "--out", tmp / "a.npz"], "one of"),
    }


CASES = [
    "missing checkpoint", "corrupt checkpoint", "classifier as model", "classifier size", "classifier classes", "classifier schedule",
    "impossible respacing", "too many steps", "bad sections", "class out of range", "two step options",
    "bad extension", "unwritable output", "negative num", "cuda missing", "eta with ddpm", "info on junk",
    "guidance without classifier", "unknown sampler", "unknown spacing", "nfe too small", "heun steps too few",
    "eta with a solver", "cfg without null class", "nan eta", "nan guidance", "threshold without clipping",
    "spacing with respacing", "spacing without steps", "ddim with another sampler", "bad guidance interval",
    "nfe and steps",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2(models, wrong_classifier, tmp_path, case):
    if case == "cuda missing" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args, needle = bad_inputs(models, wrong_classifier, tmp_path)[case]
    result = run(*args)
    err = stderr_of(result).strip()
    assert result.exit_code == 2, (case, result.output, result.exception)
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err
    assert not (tmp_path / "a.npz").exists()


def test_fast_solver_with_classifier_free_guidance(tmp_path):
    """dpm++2m at 4 network evaluations with CFG on a null-class model, through the CLI; the
    command says what ran."""
    import dataclasses

    from tests.conftest import TINY_UNET, write_unet

    model = write_unet(tmp_path / "cfg.pt", dataclasses.replace(TINY_UNET, null_class=True))
    out = tmp_path / "s.npz"
    result = run("sample", model, "--num", 2, "--sampler", "dpm++2m", "--nfe", 4, "--cfg-scale", 2,
                 "--dynamic-threshold", "--class", 3, "--out", out)
    assert result.exit_code == 0, result.output
    said = " ".join(stderr_of(result).split())
    assert "dpm++2m, 4 steps (time-uniform), 4 network evaluations per image (each one forward of a doubled batch)" in said
    with np.load(out) as d:
        assert d["arr_0"].shape == (2, 16, 16, 3) and list(d["arr_1"]) == [3, 3]


def test_existing_output_is_kept(models, tmp_path):
    out = tmp_path / "s.npz"
    assert run("sample", models["unet"], "--num", 1, "--steps", 3, "--out", out, "-q").exit_code == 0
    before = out.read_bytes()
    result = run("sample", models["unet"], "--num", 1, "--steps", 3, "--seed", 5, "--out", out, "-q")
    assert result.exit_code == 2 and "--overwrite" in stderr_of(result)
    assert out.read_bytes() == before
    assert run("sample", models["unet"], "--num", 1, "--steps", 3, "--seed", 5, "--out", out, "-q", "--overwrite").exit_code == 0
    assert out.read_bytes() != before


def test_openai_state_dict_samples_without_flags_when_published(tmp_path):
    """A bare state dict whose structure is unknown asks for the flags, then samples with them."""
    from adm_cli.nn import build_unet
    from tests.conftest import TINY_UNET, randomized

    path = tmp_path / "bare.pt"
    torch.save(randomized(build_unet(TINY_UNET)).state_dict(), path)
    result = run("sample", path, "--num", 1, "--steps", 3, "--out", tmp_path / "a.npz")
    assert result.exit_code == 2 and "--image-size" in stderr_of(result)
    result = run("sample", path, "--num", 1, "--steps", 3, "--out", tmp_path / "a.npz", "-q",
                 "--image-size", 16, "--num-head-channels", 16, "--schedule", "linear", "--diffusion-steps", 100)
    assert result.exit_code == 0, stderr_of(result)


def test_bf16_on_cpu_and_raw_weights(models, tmp_path):
    """The fast CPU mode runs and stays close to fp32 on the same seeds."""
    args = ["sample", models["unet"], "--num", 2, "--ddim", 5, "-q"]
    assert run(*args, "--precision", "fp32", "--out", tmp_path / "a.npz").exit_code == 0
    result = run(*args, "--precision", "bf16", "--weights", "model", "--out", tmp_path / "b.npz")
    assert result.exit_code == 0, stderr_of(result)
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["arr_1"], b["arr_1"])
        assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).mean() < 20


def test_default_precision_follows_native_bf16(models, tmp_path, monkeypatch):
    """On a CPU with native bf16 (forced here through ADM_NATIVE_BF16), the default is exactly the
    bf16 path and says so; on one without, exactly fp32; `--precision fp32` stays reference-exact."""
    args = ["sample", models["unet"], "--num", 2, "--ddim", 5]

    def draw(name, *extra, native):
        monkeypatch.setenv("ADM_NATIVE_BF16", native)
        result = run(*args, *extra, "--out", tmp_path / f"{name}.npz")
        assert result.exit_code == 0, stderr_of(result)
        with np.load(tmp_path / f"{name}.npz") as f:
            return f["arr_0"], stderr_of(result)

    native_default, said = draw("native-default", native="1")
    assert "in bf16" in said
    native_fp32, said = draw("native-fp32", "--precision", "fp32", native="1")
    assert "in fp32" in said
    emulated_default, said = draw("emulated-default", native="0")
    assert "in fp32" in said
    assert np.array_equal(native_default, draw("bf16", "--precision", "bf16", native="0")[0])
    assert np.array_equal(native_fp32, emulated_default)


def test_training_default_precision_follows_native_bf16(tmp_path, monkeypatch):
    from tests.cli_helpers import DATA, TINY

    for native, expect in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("ADM_NATIVE_BF16", native)
        out = tmp_path / f"run-{native}"
        result = run("train-diffusion", DATA, "--out", out, *TINY, "--steps", 1)
        assert result.exit_code == 0, stderr_of(result)
        assert json.loads((out / "run.json").read_text())["config"]["train"]["precision"] == expect


def test_sampler_ddim_with_a_step_count_is_ddim_k(models, tmp_path):
    """`--sampler ddim --nfe K` and `--steps K` take guided-diffusion's ddimK steps, as `--ddim K`
    does (never the cosine schedule's degenerate last step); an explicit --spacing still places them."""
    from adm_cli.cli.sample import step_choice

    choice = dict(ddim=None, steps=None, nfe=None, respacing=None, sampler="ddim", spacing=None, guided=True)
    assert step_choice(**{**choice, "nfe": 10}) == step_choice(**{**choice, "steps": 10}) == ("ddim", "ddim10", None, 10)
    assert step_choice(**{**choice, "nfe": 10, "spacing": "logsnr"}) == ("ddim", "10", "logsnr", None)
    args = ["sample", models["unet"], "--num", 2, "-q"]
    assert run(*args, "--ddim", 5, "--out", tmp_path / "a.npz").exit_code == 0
    assert run(*args, "--sampler", "ddim", "--nfe", 5, "--out", tmp_path / "b.npz").exit_code == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
