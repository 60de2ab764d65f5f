"""Training on CUDA (run on a GPU machine: `python -m pytest -m gpu`): fp32 on the GPU follows the
CPU run, and bf16, fp16 (dynamic loss scaling) and torch.compile train with finite weights."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from adm_cli.checkpoint import read_checkpoint
from adm_cli.cli.app import app

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
runner = CliRunner()
TINY = ["synthetic:256", "--preset", "tiny", "--image-size", "16", "--batch-size", "16", "--log-every", "1", "--quiet"]


def train(out, *extra) -> list[dict]:
    result = runner.invoke(app, ["train-diffusion", *TINY, "--out", str(out), *[str(e) for e in extra]])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fp32_cuda_follows_cpu(tmp_path):
    cpu = train(tmp_path / "cpu", "--device", "cpu", "--precision", "fp32", "--steps", 3)
    gpu = train(tmp_path / "gpu", "--device", "cuda", "--precision", "fp32", "--steps", 3)
    # t and noise come from a CUDA generator on the GPU (other numbers than the CPU's), so the
    # losses agree in scale, not value; the same initial weights and data make them close.
    assert abs(cpu[0]["loss"] - gpu[0]["loss"]) < 0.5
    assert all(torch.isfinite(v).all() for v in read_checkpoint(tmp_path / "gpu/checkpoints/step-00000003.pt")["model"].values())


@pytest.mark.parametrize("precision,compile", [("bf16", False), ("fp16", False), ("bf16", True)])
def test_fast_modes_train(tmp_path, precision, compile):
    extra = ["--device", "cuda", "--precision", precision, "--steps", 30]
    if compile:
        extra.append("--compile")
    records = train(tmp_path / "r", *extra)
    assert records[-1]["loss"] < records[0]["loss"]
    state = read_checkpoint(tmp_path / "r/checkpoints/step-00000030.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    scaler = state["train_state"]["scaler"]
    assert scaler["enabled"] == (precision == "fp16")
    if precision == "fp16":
        assert scaler["scale"] >= 1.0


def test_resume_exact_on_cuda(tmp_path):
    a = train(tmp_path / "a", "--device", "cuda", "--precision", "bf16", "--steps", 4)
    train(tmp_path / "b", "--device", "cuda", "--precision", "bf16", "--steps", 2)
    result = runner.invoke(app, ["train-diffusion", "--out", str(tmp_path / "b"), "--resume", "--steps", "4", "--quiet", "--log-every", "1", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    sa = read_checkpoint(tmp_path / "a/checkpoints/step-00000004.pt")["model"]
    sb = read_checkpoint(tmp_path / "b/checkpoints/step-00000004.pt")["model"]
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst < 1e-5, worst  # cuDNN may pick other kernels after a restart; bitwise on CPU
    assert len(a) == 4
