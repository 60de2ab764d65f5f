"""`adm interpolate`: slerp, inversion accuracy against step count, end frames = reconstructions,
noise mode, class choice, inputs, outputs and every bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from adm_cli.backend import make_backend
from adm_cli.checkpoint import Loaded, load_model
from adm_cli.cli.app import app
from adm_cli.config import DiffusionConfig
from adm_cli.diffusion import ddim_invert, make_schedule, sample_ddim
from adm_cli.generate import GenerateError, SampleOptions, build_denoiser, ddim_spacing
from tests.diffusion_helpers import denoiser
from adm_cli.generate.interpolate import InterpolateOptions, interpolate, lerp, load_endpoint, psnr, slerp
from tests.conftest import TINY_UNET, write_unet

runner = CliRunner()
CPU = make_backend("cpu", "fp32")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def two_images(seed: int = 0, size: int = 16, channels: int = 3) -> np.ndarray:
    """Smooth test images (a blurred random field), (2, H, W, C) uint8."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x * 200 + 20).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------- slerp and PSNR


def test_slerp_of_orthogonal_unit_vectors_is_the_circle():
    z0 = torch.zeros(1, 2, 2, dtype=torch.float64)
    z1 = torch.zeros(1, 2, 2, dtype=torch.float64)
    z0[0, 0, 0], z1[0, 1, 1] = 1.0, 1.0
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = slerp(z0, z1, alpha)
    for a, point in zip(alpha.tolist(), out):
        torch.testing.assert_close(point, math.cos(a * math.pi / 2) * z0 + math.sin(a * math.pi / 2) * z1)


def test_slerp_keeps_the_norm_statistics_of_gaussian_latents():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 64, 3, 16, 16, generator=g)  # 64 pairs of 768-d latents
    alpha = torch.linspace(0, 1, 9)
    path = slerp(z0, z1, alpha)  # (9, 64, 3, 16, 16)
    d = 3 * 16 * 16
    norms = path.flatten(2).norm(dim=-1) / math.sqrt(d)  # ≈ 1 for N(0, I)
    assert (norms - 1).abs().max() < 0.1
    stds = path.flatten(2).std(dim=-1)
    assert (stds - 1).abs().max() < 0.1
    midline = lerp(z0[0], z1[0], torch.tensor([0.5]))[0]
    assert abs(midline.norm().item() / math.sqrt(d) - 1 / math.sqrt(2)) < 0.1  # what slerp avoids
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1, rtol=1e-5, atol=1e-5)


def test_slerp_of_parallel_latents_is_the_straight_line():
    z = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = slerp(z, 2 * z, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out, torch.stack([z, 1.5 * z, 2 * z]))


def test_psnr_closed_forms():
    a = np.full((4, 4, 1), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert psnr(a, a + 10) == pytest.approx(20 * math.log10(255) - 20)


# --------------------------------------------------------------------------- inversion accuracy


def gaussian_data_eps(config: DiffusionConfig, mu: float, s: float):
    """The exact ε-prediction for data x_0 ~ N(mu, s² I): E[ε | x_t] = √(1-ᾱ) (x_t - √ᾱ mu) / (ᾱ s² + 1 - ᾱ)."""
    full = make_schedule(config)

    def model_fn(x, model_t):
        ab = full.alpha_bar[model_t.long()].reshape(-1, 1, 1, 1).to(x)
        return torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * mu) / (ab * s**2 + 1 - ab)

    return model_fn


def test_inversion_error_falls_as_steps_grow():
    """DDIM inversion then decoding with the exact score of Gaussian data: the only error is the
    discretisation of the η = 0 ODE, and it shrinks with the step count."""
    config = DiffusionConfig(steps=1000, schedule="cosine")
    model_fn = gaussian_data_eps(config, mu=0.2, s=0.5)
    g = torch.Generator().manual_seed(0)
    x0 = (0.2 + 0.5 * torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64))
    errors = []
    for k in (10, 25, 50, 100, 250):
        sch = make_schedule(config, ddim_spacing(k, 1000))
        d = denoiser(model_fn, sch, config, clip_denoised=False)
        recon = sample_ddim(d, ddim_invert(d, x0))
        errors.append((recon - x0).pow(2).mean().sqrt().item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 10, errors


class GaussianEps(torch.nn.Module):
    """A 'network' with the exact ε of Gaussian data, N(0.2, 0.5²) per value (see gaussian_data_eps)."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.fn = gaussian_data_eps(config, mu=0.2, s=0.5)

    def forward(self, x, t, y=None):
        return self.fn(x, t)


def test_reconstruction_psnr_rises_with_steps_through_interpolate(tmp_path):
    config = DiffusionConfig(steps=1000, schedule="cosine")
    unet = dataclasses.replace(TINY_UNET, num_classes=None, learn_sigma=False)
    model = Loaded("diffusion", GaussianEps(config), unet, config, None, "adm", None, tmp_path / "gauss.pt")
    images = two_images()
    scores = [interpolate(model, images, InterpolateOptions(steps=k, frames=2), backend=CPU).psnr for k in (10, 50, 250)]
    assert min(scores[1]) > max(scores[0]) and min(scores[2]) > max(scores[1]), scores
    assert min(scores[2]) > 40, scores


# --------------------------------------------------------------------------- the interpolation


def test_end_frames_are_the_reconstructions(models):
    model = load_model(models["unet"])
    images = two_images(3)
    result = interpolate(model, images, InterpolateOptions(steps=8, frames=5, class_label=2), backend=CPU)
    assert result.frames.shape == (5, 16, 16, 3) and result.frames.dtype == np.uint8
    np.testing.assert_allclose(result.alpha, np.linspace(0, 1, 5))
    # an independent encode / decode of each image on its own
    sch = make_schedule(model.diffusion, ddim_spacing(8, model.diffusion.steps))
    d = build_denoiser(model, schedule=sch, options=SampleOptions(num=1, sampler="ddim"), backend=CPU, labels=torch.tensor([2]))
    for i, end in ((0, 0), (1, -1)):
        x0 = torch.from_numpy(images[i : i + 1]).permute(0, 3, 1, 2).float() / 127.5 - 1
        x_T = ddim_invert(d, x0)
        torch.testing.assert_close(torch.from_numpy(result.latents[end]), x_T[0], rtol=1e-4, atol=1e-4)
        recon = sample_ddim(d, x_T)
        u8 = ((recon + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()[0]
        assert np.abs(u8.astype(int) - result.frames[end].astype(int)).max() <= 1
    assert result.psnr == (psnr(images[0], result.frames[0]), psnr(images[1], result.frames[-1]))
    # inner frames follow the slerp of the two latents
    expected = slerp(torch.from_numpy(result.latents[0]), torch.from_numpy(result.latents[-1]), torch.tensor(result.alpha))
    torch.testing.assert_close(torch.from_numpy(result.latents), expected.float(), rtol=1e-5, atol=1e-5)


def test_frames_do_not_depend_on_the_batch_size(models):
    model = load_model(models["unet"])
    a = interpolate(model, two_images(), InterpolateOptions(steps=4, frames=5, class_label=0, batch_size=2), backend=CPU)
    b = interpolate(model, two_images(), InterpolateOptions(steps=4, frames=5, class_label=0, batch_size=5), backend=CPU)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1


def test_noise_mode_mixes_x_t_and_is_seeded(models):
    model = load_model(models["unet"])  # T = 100
    opts = InterpolateOptions(mode="noise", t=50, steps=20, frames=4, class_label=0, seed=3)
    a = interpolate(model, two_images(), opts, backend=CPU)
    b = interpolate(model, two_images(), opts, backend=CPU)
    assert np.array_equal(a.frames, b.frames)
    c = interpolate(model, two_images(), dataclasses.replace(opts, seed=4), backend=CPU)
    assert not np.array_equal(a.frames, c.frames)
    assert max(a.meta["timesteps"]) <= 50 and a.schedule_steps == len(a.meta["timesteps"])
    torch.testing.assert_close(torch.from_numpy(a.latents[1]), torch.from_numpy(2 / 3 * a.latents[0] + 1 / 3 * a.latents[-1]))


def test_class_is_predicted_by_the_classifier(models):
    model, clf = load_model(models["unet"]), load_model(models["classifier"])
    images = two_images()
    result = interpolate(model, images, InterpolateOptions(steps=3, frames=2), backend=CPU, classifier=clf)
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        logp = torch.log_softmax(clf.model(x0, torch.zeros(2, dtype=torch.long)), -1)
    assert result.class_label == int(logp.sum(0).argmax())
    assert result.class_source.startswith("classifier")


def test_unconditional_model_needs_no_class(tmp_path):
    path = write_unet(tmp_path / "u.pt", dataclasses.replace(TINY_UNET, num_classes=None))
    result = interpolate(load_model(path), two_images(), InterpolateOptions(steps=3, frames=3), backend=CPU)
    assert result.class_label is None and result.class_source == "unconditional"
    with pytest.raises(GenerateError, match="--class needs a class-conditional model"):
        interpolate(load_model(path), two_images(), InterpolateOptions(steps=3, class_label=1), backend=CPU)


# --------------------------------------------------------------------------- inputs


def test_inputs_from_images_and_sample_files(tmp_path):
    big = np.zeros((40, 60, 3), np.uint8)
    big[:, 20:40] = 255  # a white band in the centre survives the centre crop
    Image.fromarray(big).save(tmp_path / "a.png")
    image, source = load_endpoint(tmp_path / "a.png", image_size=16, channels=3)
    assert image.shape == (16, 16, 3) and source == str(tmp_path / "a.png")
    assert image[:, 8].min() > 200 and image[:, 0].max() < 50
    gray, _ = load_endpoint(tmp_path / "a.png", image_size=16, channels=1)
    assert gray.shape == (16, 16, 1)
    arr = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=arr)
    image, source = load_endpoint(f"{tmp_path / 's.npz'}:2", image_size=16, channels=3)
    assert np.array_equal(image, arr[2]) and source.endswith("s.npz image 2")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.png", "input not found"),
        ("s.npz", "needs an image index"),
        ("s.npz:3", "index 3 is out of range (it holds 3 images)"),
        ("bad.png", "cannot read the image"),
        ("notes.txt", "not an image file"),
    ],
)
def test_bad_inputs(tmp_path, spec, message):
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((3, 16, 16, 3), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(GenerateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_endpoint(tmp_path / spec, image_size=16, channels=3)


# --------------------------------------------------------------------------- command line


def write_pngs(tmp_path):
    images = two_images(size=16)
    for name, im in zip("ab", images):
        Image.fromarray(im).save(tmp_path / f"{name}.png")
    return tmp_path / "a.png", tmp_path / "b.png"


def test_cli_writes_frames_strip_reconstructions_and_summary(models, tmp_path):
    a, b = write_pngs(tmp_path)
    out = tmp_path / "interp"
    result = run("interpolate", models["unet"], a, b, "--out", out, "--steps", 4, "--frames", 3,
                 "--classifier", models["classifier"], "-q")
    assert result.exit_code == 0, result.stderr
    assert "reconstruction PSNR: A " in result.stdout and "(classifier" in result.stdout
    with np.load(out / "frames.npz") as d:
        assert d["arr_0"].shape == (3, 16, 16, 3) and d["latents"].shape == (3, 3, 16, 16)
        assert len(set(d["arr_1"].tolist())) == 1
    with Image.open(out / "strip.png") as strip:
        assert strip.size == (5 * 18 + 2, 20)  # A, 3 frames, B with 2-pixel padding
    with Image.open(out / "reconstructions.png") as grid:
        assert grid.size == (2 * 18 + 2, 2 * 18 + 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["frames"] == 3 and set(summary["psnr_db"]) == {"a", "b"}
    # a second run does not replace the first without --overwrite
    before = (out / "frames.npz").read_bytes()
    again = run("interpolate", models["unet"], a, b, "--out", out, "--steps", 3, "--class", 0, "-q")
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert (out / "frames.npz").read_bytes() == before
    again = run("interpolate", models["unet"], a, b, "--out", out, "--steps", 3, "--class", 0, "-q", "--overwrite", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["steps"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "class-conditional: pass --class C, or --classifier CKPT"),
        (["--class", 4], "--class 4 is out of range [0, 3]"),
        (["--class", 0, "--frames", 1], "--frames must be at least 2"),
        (["--class", 0, "--steps", 101], "--steps 101 exceeds the model's 100 diffusion steps"),
        (["--class", 0, "--mode", "noise", "--t", 100], "--t must lie in [1, 99]"),
    ],
)
def test_cli_bad_options_get_one_line(models, tmp_path, extra, message):
    a, b = write_pngs(tmp_path)
    result = run("interpolate", models["unet"], a, b, "--out", tmp_path / "o", "-q", *extra)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o" / "frames.npz").exists()


def test_cli_refuses_a_super_res_model_and_a_missing_input(models, tmp_path):
    a, _ = write_pngs(tmp_path)
    sr = write_unet(tmp_path / "sr.pt", dataclasses.replace(TINY_UNET, low_res_size=8))
    result = run("interpolate", sr, a, a, "--out", tmp_path / "o", "--class", 0)
    assert result.exit_code == 2 and "is a super-res checkpoint, expected diffusion" in result.stderr
    result = run("interpolate", models["unet"], a, tmp_path / "nope.png", "--out", tmp_path / "o", "--class", 0)
    assert result.exit_code == 2 and "input not found" in result.stderr
