"""Gradient checkpointing (`--grad-checkpoint`, guided-diffusion's ``use_checkpoint``): the same
losses and gradients as without it, on the UNet (dropout included) and the classifier, and the
same training run end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adm_cli.nn import NoisyClassifier, build_unet
from adm_cli.nn.layers import AttentionBlock, ResBlock, set_grad_checkpointing
from tests.conftest import TINY_CLASSIFIER, TINY_UNET, randomized
from tests.cli_helpers import DATA, TINY, adm
from tests.test_train_loop import assert_same_state


def _grads(model: torch.nn.Module, inputs: tuple, *, seed: int = 3) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout masks
    out = model(*inputs)
    loss = (out.float() ** 2).mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["unet", "classifier"])
def test_same_loss_and_gradients(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "unet":
        model = randomized(build_unet(dataclasses.replace(TINY_UNET, dropout=0.1))).train()
        inputs = (torch.randn(3, 3, 16, 16, generator=g), torch.tensor([5, 50, 90]), torch.tensor([0, 1, 3]))
    else:
        model = randomized(NoisyClassifier(TINY_CLASSIFIER)).train()
        inputs = (torch.randn(3, 3, 16, 16, generator=g), torch.tensor([5, 50, 90]))
    loss_plain, grads_plain = _grads(model, inputs)
    n = set_grad_checkpointing(model)
    assert n == sum(isinstance(m, (ResBlock, AttentionBlock)) for m in model.modules()) > 0
    loss_ckpt, grads_ckpt = _grads(model, inputs)
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 10
    for k in grads_plain:
        torch.testing.assert_close(grads_ckpt[k], grads_plain[k], rtol=0, atol=1e-6, msg=k)
    set_grad_checkpointing(model, False)
    assert not any(getattr(m, "grad_checkpoint", False) for m in model.modules())


def test_checkpointing_recomputes_in_backward():
    """It does checkpoint: a block's computation runs twice per training step (forward, then
    again in backward), once without it, and once under no_grad (sampling)."""
    model = randomized(build_unet(TINY_UNET)).train()
    block = next(m for m in model.modules() if isinstance(m, ResBlock))
    calls = []
    inner = block._forward
    block._forward = lambda *a: (calls.append(1), inner(*a))[1]
    inputs = (torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    model(*inputs).mean().backward()
    assert len(calls) == 1
    set_grad_checkpointing(model)
    model(*inputs).mean().backward()
    assert len(calls) == 1 + 2
    with torch.no_grad():
        model(*inputs)
    assert len(calls) == 1 + 2 + 1


def test_training_run_is_unchanged(tmp_path):
    opts = [*TINY, "--dropout", "0.1", "--steps", 2]
    adm("train-diffusion", DATA, "--out", tmp_path / "plain", *opts)
    adm("train-diffusion", DATA, "--out", tmp_path / "ckpt", *opts, "--grad-checkpoint")
    assert_same_state(tmp_path / "plain/checkpoints/step-00000002.pt", tmp_path / "ckpt/checkpoints/step-00000002.pt",
                      exact=False, atol=1e-6)
