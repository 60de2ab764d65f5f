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
