"""NVIDIA TorchScript / OpenAI-port Inception names ↔ pytorch-fid names (adm_cli.evaluate.nvidia_names).

tests/data/fid_inception_keys.txt: ``pytorch_fid.inception.fid_inception_v3()`` (pytorch-fid 0.3.0,
torchvision 0.29) state-dict keys and shapes, num_batches_tracked dropped.
tests/data/nvidia_inception_keys.txt: keys and shapes of the module tree of openai/consistency_models
``evaluations/inception_v3.py`` (= NVIDIA's TorchScript names), written independently of the module
under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adm_cli.evaluate.nvidia_names import (
    NVIDIA_TO_FID_LAYERS,
    fid_inception_to_nvidia,
    is_nvidia_state_dict,
    nvidia_to_fid_inception,
    state_dict_from_torchscript,
)

DATA = Path(__file__).parent / "data"


def _read_keys(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (DATA / name).read_text().splitlines():
        key, shape = line.split()
        out[key] = tuple(int(s) for s in shape.split("x"))
    return out


FID_KEYS = _read_keys("fid_inception_keys.txt")
NVIDIA_KEYS = _read_keys("nvidia_inception_keys.txt")


def _random_fid_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in FID_KEYS.items():
        if key.endswith("bn.weight"):
            state[key] = torch.ones(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.1
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def test_key_files_sizes():
    assert len(FID_KEYS) == 94 * 5 + 2
    assert len(NVIDIA_KEYS) == 94 * 4 + 2
    assert len(NVIDIA_TO_FID_LAYERS) == 94


def test_roundtrip_full_shapes():
    fid = _random_fid_state()
    nv = fid_inception_to_nvidia(fid)
    assert set(nv) == set(NVIDIA_KEYS)
    assert {k: tuple(v.shape) for k, v in nv.items()} == NVIDIA_KEYS
    back = nvidia_to_fid_inception(nv)
    assert list(back) == list(FID_KEYS)  # same keys, torchvision order
    for k, v in fid.items():
        assert back[k].shape == v.shape
        assert torch.equal(back[k], v), k


def test_known_pairs():
    nv = fid_inception_to_nvidia(_random_fid_state(1))
    fid = nvidia_to_fid_inception(nv)
    pairs = {
        "layers.conv.weight": "Conv2d_1a_3x3.conv.weight",
        "layers.conv_4.var": "Conv2d_4a_3x3.bn.running_var",
        "layers.mixed.tower.conv_1.weight": "Mixed_5b.branch5x5_2.conv.weight",
        "layers.mixed_3.conv.beta": "Mixed_6a.branch3x3.bn.bias",
        "layers.mixed_6.conv.mean": "Mixed_6d.branch1x1.bn.running_mean",  # sFID layer
        "layers.mixed_6.tower_1.conv_4.weight": "Mixed_6d.branch7x7dbl_5.conv.weight",
        "layers.mixed_8.tower_1.conv_3.weight": "Mixed_7a.branch7x7x3_4.conv.weight",
        "layers.mixed_9.tower_mixed_conv_1.weight": "Mixed_7b.branch3x3_2b.conv.weight",
        "layers.mixed_10.tower_1_mixed_conv.var": "Mixed_7c.branch3x3dbl_3a.bn.running_var",
        "layers.mixed_10.tower_2_conv.beta": "Mixed_7c.branch_pool.bn.bias",
        "output.weight": "fc.weight",
        "output.bias": "fc.bias",
    }
    for a, b in pairs.items():
        assert torch.equal(nv[a], fid[b]), (a, b)
    assert torch.equal(fid["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _scripted_nvidia_tree() -> torch.jit.ScriptModule:
    """A module tree whose state_dict carries NVIDIA's names (tiny tensors: 2 channels)."""
    root = _Node()
    for key in NVIDIA_KEYS:
        *path, leaf = key.split(".")
        mod = root
        for name in path:
            if not hasattr(mod, name):
                mod.add_module(name, _Node())
            mod = getattr(mod, name)
        shape = (2, 1, 1, 1) if leaf == "weight" and key != "output.weight" else (2,)
        if key == "output.weight":
            shape = (3, 2)
        elif key == "output.bias":
            shape = (3,)
        mod.register_parameter(leaf, nn.Parameter(torch.randn(shape)))
    return torch.jit.script(root)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_state_dict(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(_scripted_nvidia_tree(), str(path))
    state = state_dict_from_torchscript(path)
    assert set(state) == set(NVIDIA_KEYS)
    assert is_nvidia_state_dict(state)
    fid = nvidia_to_fid_inception(state)
    assert set(fid) == set(FID_KEYS)
    assert torch.equal(fid["Mixed_6d.branch1x1.bn.running_var"], state["layers.mixed_6.conv.var"])
    assert torch.equal(fid["Mixed_6d.branch1x1.bn.weight"], torch.ones(2))
    assert not is_nvidia_state_dict(fid)


def test_missing_and_unexpected_keys():
    nv = fid_inception_to_nvidia(_random_fid_state(2))
    broken = dict(nv)
    del broken["layers.mixed_6.conv.var"]
    with pytest.raises(ValueError, match=r"missing key 'layers\.mixed_6\.conv\.var'"):
        nvidia_to_fid_inception(broken)
    extra = dict(nv, **{"layers.mixed_6.conv.gamma": torch.ones(192)})
    with pytest.raises(ValueError, match=r"unexpected key 'layers\.mixed_6\.conv\.gamma'"):
        nvidia_to_fid_inception(extra)
    fid = _random_fid_state(3)
    del fid["fc.bias"]
    with pytest.raises(ValueError, match=r"missing key 'fc\.bias'"):
        fid_inception_to_nvidia(fid)


def test_bad_shapes_and_gamma():
    nv = fid_inception_to_nvidia(_random_fid_state(4))
    nv["layers.conv_1.beta"] = torch.zeros(31)
    with pytest.raises(ValueError, match=r"layers\.conv_1\.beta"):
        nvidia_to_fid_inception(nv)
    fid = _random_fid_state(5)
    fid["Mixed_5b.branch1x1.bn.weight"] = torch.full((64,), 2.0)
    with pytest.raises(ValueError, match=r"Mixed_5b\.branch1x1\.bn\.weight"):
        fid_inception_to_nvidia(fid)
    assert "layers.mixed.conv.beta" in fid_inception_to_nvidia(fid, require_unit_gamma=False)
