"""The networks equal guided-diffusion's, parameter for parameter and output for output.

Golden values: assets/golden/nn/*.npz, made by assets/golden/nn/make_golden.py from the reference
implementation (openai/guided-diffusion @ 22e0df8) at reduced width for each published
configuration family; provenance in assets/golden/nn/README.md.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adm_cli.config import ClassifierConfig, UNetConfig
from adm_cli.nn import NoisyClassifier, build_unet
from tests.golden_weights import deterministic_state_dict

GOLDEN = sorted((Path(__file__).parent.parent / "assets" / "golden" / "nn").glob("*.npz"))


def _build(data):
    cfg = json.loads(str(data["config_json"]))
    kind = cfg.pop("kind")
    if kind == "classifier":
        return NoisyClassifier(ClassifierConfig.from_dict(cfg))
    return build_unet(UNetConfig.from_dict(cfg))


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_matches_reference(path):
    data = np.load(path)
    model = _build(data).eval()
    ref_shapes = {name: tuple(shape) for name, shape in json.loads(str(data["param_shapes_json"])).items()}
    assert list(ref_shapes) == [str(n) for n in data["param_names"]]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref_shapes  # same names, same shapes: guided-diffusion state dicts load strictly
    model.load_state_dict(deterministic_state_dict(ref_shapes), strict=True)
    args = [torch.from_numpy(data["x"]), torch.from_numpy(data["t"])]
    kwargs = {}
    if "y" in data:
        kwargs["y"] = torch.from_numpy(data["y"])
    if "low_res" in data:
        kwargs["low_res"] = torch.from_numpy(data["low_res"])
    with torch.no_grad():
        out = model(*args, **kwargs)
    ref = torch.from_numpy(data["out"])
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_golden_files_present():
    assert len(GOLDEN) >= 12
