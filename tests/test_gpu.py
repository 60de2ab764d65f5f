"""The CUDA path (run on a GPU machine: `python -m pytest -m gpu`): the same networks and samples
as on the CPU in fp32 (TF32 off), and the fast modes (bf16 autocast, channels-last, compile) run."""

import numpy as np
import pytest
import torch

from adm_cli.backend import make_backend
from adm_cli.checkpoint import load_model
from adm_cli.generate import sample_images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_fp32_cuda_equals_cpu(models):
    labels = torch.tensor([0, 1, 2, 3])
    kw = dict(sampler="ddim", respacing="ddim10", labels=labels, seed=0)
    cpu, _ = sample_images(load_model(models["unet"]), 4, backend=make_backend("cpu", "fp32"), **kw)
    gpu, _ = sample_images(load_model(models["unet"]), 4, backend=make_backend("cuda", "fp32"), **kw)
    assert (cpu - gpu).abs().max().item() < 1e-3


@pytest.mark.parametrize("precision,compile", [("bf16", False), ("fp16", False), ("bf16", True)])
def test_fast_modes_run_and_stay_close(models, precision, compile):
    labels = torch.tensor([0, 1, 2, 3])
    kw = dict(sampler="ddim", respacing="ddim10", labels=labels, seed=0, classifier=load_model(models["classifier"]),
              guidance_scale=1.0)
    ref, _ = sample_images(load_model(models["unet"]), 4, backend=make_backend("cuda", "fp32"), **kw)
    fast, _ = sample_images(
        load_model(models["unet"]), 4, backend=make_backend("cuda", precision, channels_last=True, compile=compile), **kw
    )
    assert np.isfinite(fast.numpy()).all()
    assert (ref - fast).abs().mean().item() < 0.05


@pytest.mark.gpu
def test_inception_features_on_cuda_match_the_cpu():
    """The evaluation network in float32 with TF32 off: CUDA features equal the CPU's closely."""
    from adm_cli.evaluate.inception import FIDInception
    from adm_cli.evaluate.nets import InceptionFeatures
    from adm_cli.evaluate.precision_recall import precision_recall
    from tests.eval_helpers import random_inception_state

    net = FIDInception()
    net.load_state_dict(random_inception_state(0), strict=False)
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    cpu = InceptionFeatures(net, "w", device="cpu")(images)
    gpu = InceptionFeatures(net, "w", device="cuda")(images)
    for k in ("pool", "spatial"):
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=0, atol=1e-4)
    rng = np.random.default_rng(1)
    ref, sam = rng.gamma(1, 0.4, (300, 2048)).astype(np.float32), rng.gamma(1, 0.41, (400, 2048)).astype(np.float32)
    assert precision_recall(ref, sam, device="cuda") == pytest.approx(precision_recall(ref, sam), abs=3 / 300)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_upsampling_on_cuda_matches_the_cpu(tmp_path, precision):
    """`adm upsample`'s library path on CUDA: fp32 equals the CPU to float rounding, bf16 stays close."""
    import dataclasses

    from adm_cli.data.samples import read_samples
    from adm_cli.generate import SampleOptions
    from adm_cli.generate.upsample import check_base, run_upsampling
    from tests.conftest import TINY_UNET, write_unet

    ckpt = write_unet(tmp_path / "sr.pt", dataclasses.replace(TINY_UNET, low_res_size=8))
    base = tmp_path / "base.npz"
    np.savez(base, arr_0=np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), arr_1=np.arange(6) % 4)
    outs = []
    for device, prec in (("cpu", "fp32"), ("cuda", precision)):
        model = load_model(ckpt)
        options = SampleOptions(num=6, sampler="ddim", respacing="ddim10", batch_size=4)
        out = run_upsampling(model, check_base(model, base, options), tmp_path / f"{device}.npz", options, backend=make_backend(device, prec))
        outs.append(read_samples(out))
    (cpu, lc), (gpu, lg) = outs
    assert np.array_equal(lc, lg)
    diff = np.abs(cpu.astype(int) - gpu.astype(int))
    assert diff.max() <= (2 if precision == "fp32" else 255) and diff.mean() < (0.05 if precision == "fp32" else 8)


def test_interpolation_on_cuda_matches_the_cpu(models):
    from adm_cli.generate.interpolate import InterpolateOptions, interpolate

    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    opts = InterpolateOptions(steps=10, frames=4, class_label=1)
    cpu = interpolate(load_model(models["unet"]), images, opts, backend=make_backend("cpu", "fp32"))
    gpu = interpolate(load_model(models["unet"]), images, opts, backend=make_backend("cuda", "fp32"))
    np.testing.assert_allclose(gpu.latents, cpu.latents, rtol=0, atol=1e-3)
    assert np.abs(gpu.frames.astype(int) - cpu.frames.astype(int)).max() <= 2
