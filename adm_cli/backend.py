"""The one place that decides device, precision, memory format, compilation, generators and
torch.distributed. Every command goes through it; nothing else touches these settings."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import Iterator, Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16", "auto"]


class BackendError(ValueError):
    """An impossible device or precision request (one-line message)."""


@dataclass(frozen=True)
class Backend:
    """Where and how networks run.

    `precision="fp32"` is the reference-exact mode (TF32 off); "bf16"/"fp16" run the network
    under autocast while the diffusion arithmetic stays float32.
    """

    device: torch.device
    precision: Literal["fp32", "bf16", "fp16"]
    channels_last: bool = False
    compile: bool = False
    cast_weights: bool = False  # bf16/fp16: store conv/linear weights in that dtype (inference only)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the device, in eval mode, float32 weights (autocast does the rest);
        with `compile`, return it wrapped by torch.compile (compiled on its first call)."""
        model = model.to(self.device, dtype=torch.float32).eval()
        dtype = self.autocast_dtype
        if self.cast_weights and dtype is not None:
            # autocast would cast these weights on every call (parameters without grad are not
            # cached); casting once gives the same products. Norms and embeddings stay float32.
            for m in model.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    m.to(dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        return self.maybe_compile(model)

    def maybe_compile(self, fn):
        return torch.compile(fn, dynamic=False) if self.compile else fn


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BackendError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (read from the CPU's feature flags through torch, not guessed from the
    vendor). Elsewhere bf16 is emulated and slower than fp32.

    The environment variable ``ADM_NATIVE_BF16=0`` or ``=1`` overrides the detection on the CPU
    (the test suite pins it, so its results do not depend on the machine; `--precision` is the
    per-command choice)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        forced = os.environ.get("ADM_NATIVE_BF16", "").strip()
        if forced in ("0", "1"):
            return forced == "1"
        probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
        return any(probe is not None and bool(probe()) for probe in probes)
    return False


def resolve_precision(precision: str | None, device: torch.device) -> Literal["fp32", "bf16", "fp16"]:
    """The one rule for ``--precision`` (sampling, upsampling, interpolation, training, the demo):
    "auto" (or None) is bf16 where the device computes it natively (`native_bf16`: a GPU with
    bf16, a CPU with AVX-512 BF16 or AMX), else fp32; fp16 needs a GPU. fp32 is the
    reference-exact mode, one flag away.

    On a CPU with native bf16 it measured about 2x fp32 (README "Speed": 1.86-2.4x on small
    models, 2.07x on the ImageNet-64 configuration), with samples differing from fp32 by a mean
    of 2e-3 on the [-1, 1] scale (a quarter of a uint8 level; max 0.48 on the small model, 0.06
    on ImageNet-64, bench/README.md "Numerics"). On an AVX2-only CPU bf16 is emulated, so "auto"
    stays fp32 there."""
    if precision in (None, "", "auto"):
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise BackendError(f"unknown precision {precision!r} (fp32, bf16, fp16 or auto)")
    if precision == "fp16" and device.type == "cpu":
        raise BackendError("fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return precision  # type: ignore[return-value]


def compile_cache_dir() -> str:
    """Where torch.compile keeps compiled graphs and kernels between runs: $TORCHINDUCTOR_CACHE_DIR
    when set, else ``adm/torchinductor`` under $XDG_CACHE_HOME (default ~/.cache), which survives
    reboots and per-job /tmp (torch's own default is under /tmp). Measured on this project's
    2-core CPU (tiny model, DDIM 5): the first `adm sample --compile` 150 s, the next 25 s from
    the cache, eager 11 s."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "adm", "torchinductor")


def make_backend(
    device: str | None = None,
    precision: Precision = "auto",
    *,
    channels_last: bool | None = None,
    compile: bool = False,
    cast_weights: bool | None = None,
) -> Backend:
    """Pick the device (CUDA if present) and precision (`resolve_precision`)."""
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if dev.type == "cuda":
        # fp32 is the reference-exact mode: no TF32 there; the fast modes may use it.
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    # Measured on an H100 (bench/README.md, "GPU sampling"): channels-last made eager bf16 sampling
    # 22-26 % slower (GroupNorm), and casting conv/linear weights once saved 1-3 % and half their memory.
    if channels_last is None:
        channels_last = False
    if cast_weights is None:
        cast_weights = precision != "fp32"
    if compile:  # read by torch when it first compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache_dir()
    return Backend(dev, precision, channels_last, compile, cast_weights)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator; library code never touches the global RNG."""
    return torch.Generator(device=device).manual_seed(int(seed))


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """For code that can only draw from torch's global RNG (weight initialisation, dropout):
    fork it, seed it, and restore it on exit, so nothing outside sees a change."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield


def image_generators(seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, so image i depends only on its own seed (not on batch size)."""
    return [generator(s, device) for s in seeds]


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> Dist:
    """Read the rank layout torchrun exports (single process when absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[Dist]:
    """Initialise torch.distributed from the torchrun environment (NCCL on GPU, gloo on CPU)."""
    import torch.distributed as tdist

    dist = torchrun_env()
    if dist.world_size == 1 or tdist.is_initialized():
        yield dist
        return
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist
    finally:
        tdist.destroy_process_group()


def distributed_device(backend: Backend, dist: Dist) -> Backend:
    """Under torchrun each process uses its own GPU."""
    if backend.device.type == "cuda" and dist.world_size > 1:
        return replace(backend, device=torch.device("cuda", dist.local_rank))  # every other choice kept
    return backend
