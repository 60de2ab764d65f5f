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
