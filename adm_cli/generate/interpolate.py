"""Interpolating real images through the diffusion latents.

Two modes:

* ``ddim`` (DDIM Sec. 4.3 and 5.3): each image x_0 is encoded to x_T by the deterministic
  η = 0 ODE run forward (`ddim_invert`), the latents are interpolated spherically (`slerp`),
  and every point is decoded with η = 0 DDIM. Decoding an end point gives the image's
  reconstruction, whose PSNR says how faithful the inversion is at this step count.
* ``noise`` (DDPM Sec. 4.3, Fig. 8): each image is diffused to x_t ~ q(x_t | x_0) at a chosen t
  with fixed noise, the two x_t are mixed linearly, and each mixture is denoised by the
  ancestral sampler from t with the same noise for every frame.

Glossary: x0 = input images in [-1, 1] (2, C, H, W); latents = the encoded pair; alpha = the
interpolation weights (F,), 0 = image A, 1 = image B; frames = decoded points (F, H, W, C) uint8.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from adm_cli.version import __version__
from adm_cli.backend import Backend, image_generators
from adm_cli.checkpoint import Loaded
from adm_cli.config import UNetConfig
from adm_cli.data.batches import to_model_input
from adm_cli.data.images import center_crop_arr, save_grid, to_uint8
from adm_cli.data.samples import IMAGE_EXTENSIONS, iter_sample_batches, sample_info
from adm_cli.diffusion import Schedule, ddim_invert, make_schedule, q_sample, respace, space_timesteps
from adm_cli.generate.denoise import build_denoiser, check_compatible, sample_batch
from adm_cli.generate.options import GenerateError, SampleOptions, ddim_spacing
from adm_cli.reporting import SILENT, Reporter

__all__ = [
    "InterpolateOptions",
    "Interpolation",
    "interpolate",
    "load_endpoint",
    "psnr",
    "slerp",
    "write_interpolation",
]

Mode = Literal["ddim", "noise"]
OUTPUT_FILES = ("frames.npz", "strip.png", "reconstructions.png", "summary.json")


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation of each image's latent (Shoemake 1985; DDIM Sec. 5.3).

    slerp(z0, z1; α) = sin((1 - α) θ) / sin θ · z0 + sin(α θ) / sin θ · z1, with
    θ = arccos(⟨z0, z1⟩ / (‖z0‖ ‖z1‖)) over all of an image's values. z0, z1: (C, H, W) or
    (B, C, H, W) with B pairs; alpha: (F,). Returns (F, C, H, W) or (F, B, C, H, W). Between
    two independent Gaussian latents θ ≈ π/2, and the path keeps their norm where a straight
    line would shrink it by up to √2. Nearly parallel latents fall back to the straight line.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64)
    flat0, flat1 = z0.double().flatten(-3), z1.double().flatten(-3)  # (..., D)
    cos = (flat0 * flat1).sum(-1) / (flat0.norm(dim=-1) * flat1.norm(dim=-1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))  # (...)
    a = a.reshape(-1, *([1] * theta.ndim))  # (F, ...)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    w0 = torch.where(near, 1 - a, torch.sin((1 - a) * theta) / safe)
    w1 = torch.where(near, a, torch.sin(a * theta) / safe)
    out = w0[..., None] * flat0 + w1[..., None] * flat1  # (F, ..., D)
    return out.reshape(*out.shape[:-1], *z0.shape[-3:]).to(z0.dtype)


def lerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(1 - α) z0 + α z1 for each α: (F, C, H, W) (DDPM Sec. 4.3's mixing of x_t)."""
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, *([1] * z0.ndim))
    return ((1 - a) * z0.double() + a * z1.double()).to(z0.dtype)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, 10 log10(255² / MSE) in dB (inf if equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --------------------------------------------------------------------------- inputs


def load_endpoint(spec: str | os.PathLike, *, image_size: int, channels: int) -> tuple[np.ndarray, str]:
    """One input image as uint8 (H, W, C) at the model's size, and a description of its source.

    `spec` is an image file (PNG, JPEG, ...) or `FILE:INDEX` for image INDEX (0-based) of a
    sample file (.npz, .h5, .npy). Images of another size are centre-cropped and resized as
    ADM's data loader does (`center_crop_arr`); colour is converted to the model's channels.
    """
    text = str(spec)
    path, index = Path(text), None
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and Path(head).suffix.lower() in (".npz", ".h5", ".hdf5", ".npy"):
        path, index = Path(head), int(tail)
    if not path.exists():
        raise GenerateError(f"input not found: {path}")
    if index is None and path.suffix.lower() in (".npz", ".h5", ".hdf5", ".npy"):
        raise GenerateError(f"{path}: a sample file needs an image index, e.g. {path}:0")
    if index is not None:
        n, _, _ = sample_info(path)
        if index >= n:
            raise GenerateError(f"{path}: index {index} is out of range (it holds {n} images)")
        images, _ = next(iter_sample_batches(path, 1, start=index))
        array = images[0]
        pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array[..., :3])
        source = f"{path} image {index}"
    else:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise GenerateError(f"{path}: not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))}) or FILE.npz:INDEX")
        try:
            with Image.open(path) as im:
                im.load()
                pil = im.copy()
        except (OSError, SyntaxError, ValueError) as e:
            raise GenerateError(f"{path}: cannot read the image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        source = str(path)
    pil = pil.convert("L" if channels == 1 else "RGB")
    pixels = center_crop_arr(pil, image_size) if pil.size != (image_size, image_size) else np.asarray(pil)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.ascontiguousarray(pixels, dtype=np.uint8), source


# --------------------------------------------------------------------------- interpolation


@dataclass(frozen=True)
class InterpolateOptions:
    steps: int = 100  # DDIM steps (ddim mode); respaced steps over the whole process (noise mode)
    frames: int = 9  # points on the path, the two reconstructions included
    mode: Mode = "ddim"
    t: int = 500  # noise mode: the original-process step the images are diffused to
    class_label: int | None = None  # class-conditional models: None = predicted by the classifier
    seed: int = 0  # noise mode: the fixed noise
    clip_denoised: bool = True  # as adm sample; better reconstructions than the bare ODE (README)
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise GenerateError(f"--steps must be positive, got {self.steps}")
        if self.frames < 2:
            raise GenerateError(f"--frames must be at least 2 (the two reconstructions), got {self.frames}")
        if self.mode not in ("ddim", "noise"):
            raise GenerateError(f"--mode must be ddim or noise, got {self.mode!r}")
        if self.batch_size <= 0:
            raise GenerateError(f"--batch-size must be positive, got {self.batch_size}")
        if self.seed < 0:
            raise GenerateError(f"--seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Interpolation:
    inputs: np.ndarray  # (2, H, W, C) uint8: A and B as the model saw them
    frames: np.ndarray  # (F, H, W, C) uint8; frames[0] / frames[-1] reconstruct A / B
    alpha: np.ndarray  # (F,)
    latents: np.ndarray  # (F, C, H, W) float32: the interpolated latents that were decoded
    psnr: tuple[float, float]  # reconstructions of A and B, dB
    class_label: int | None
    class_source: str  # "--class", "classifier (p=...)" or "unconditional"
    schedule_steps: int
    meta: dict


def check_interpolation(model: Loaded, classifier: Loaded | None, options: InterpolateOptions) -> Schedule:
    """Refuse what cannot work (one line) and return the schedule the decoder runs."""
    unet = model.config
    if model.kind != "diffusion" or not isinstance(unet, UNetConfig) or model.diffusion is None:
        raise GenerateError(f"{model.path}: is a {model.kind} checkpoint; adm interpolate needs a diffusion model")
    if options.class_label is not None and unet.num_classes is None:
        raise GenerateError("--class needs a class-conditional model; this one is unconditional")
    if options.class_label is None and unet.num_classes is not None and classifier is None:
        raise GenerateError("the model is class-conditional: pass --class C, or --classifier CKPT to predict it")
    check_compatible(model, classifier, SampleOptions(num=1, class_label=options.class_label))  # classifier fit, --class range
    T = model.diffusion.steps
    if options.steps > T:
        raise GenerateError(f"--steps {options.steps} exceeds the model's {T} diffusion steps")
    if options.mode == "ddim":
        return make_schedule(model.diffusion, ddim_spacing(options.steps, T))
    if not 0 < options.t < T:
        raise GenerateError(f"--t must lie in [1, {T - 1}], got {options.t}")
    kept = [s for s in space_timesteps(T, str(options.steps)) if s <= options.t]  # always holds step 0
    return respace(make_schedule(model.diffusion), kept)


def predict_class(classifier: Loaded, x0: torch.Tensor, backend: Backend) -> tuple[int, float]:
    """The class most probable for both images together (summed log p(y | x_0) at t = 0), and its
    mean probability."""
    net = classifier.model
    with torch.no_grad(), backend.autocast():
        logits = net(x0.to(backend.device), torch.zeros(len(x0), dtype=torch.long, device=backend.device))
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (2, K)
    label = int(logp.sum(0).argmax())
    return label, float(logp[:, label].exp().mean())


def interpolate(
    model: Loaded,
    images: np.ndarray,
    options: InterpolateOptions,
    *,
    backend: Backend,
    classifier: Loaded | None = None,
    reporter: Reporter = SILENT,
) -> Interpolation:
    """Encode images A and B (uint8 (2, H, W, C)), interpolate their latents, decode every frame."""
    unet = model.config
    schedule = check_interpolation(model, classifier, options)
    assert isinstance(unet, UNetConfig) and model.diffusion is not None
    expected = (unet.image_size, unet.image_size, unet.in_channels)
    if images.shape != (2, *expected):
        raise GenerateError(f"need two {expected} images, got {images.shape}")
    model.model = backend.prepare(model.model)
    x0 = to_model_input(images)

    label, source = options.class_label, "unconditional"
    if unet.num_classes is not None:
        if label is not None:
            source = "--class"
        else:
            assert classifier is not None
            classifier.model = backend.prepare(classifier.model)
            label, p = predict_class(classifier, x0, backend)
            source = f"classifier (mean p = {p:.3f})"
    labels = None if label is None else torch.full((2,), label, dtype=torch.long)
    alpha = torch.linspace(0, 1, options.frames, dtype=torch.float64)
    sched = schedule.to(backend.device)
    decode_options = SampleOptions(
        num=options.frames, sampler="ddim" if options.mode == "ddim" else "ddpm",
        clip_denoised=options.clip_denoised, seed=options.seed, batch_size=options.batch_size,
    )

    with reporter.progress("encoding", 1) as tick:
        if options.mode == "ddim":
            denoise = build_denoiser(model, schedule=sched, options=decode_options, backend=backend, labels=labels)
            latents = ddim_invert(denoise, x0.to(backend.device), progress=lambda i, n: tick(1 / n)).float().cpu()
        else:
            # fixed noise: ε_A from seed, ε_B from seed + 1 (the decoder's noise comes from seed + 2)
            eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in image_generators([options.seed, options.seed + 1])])
            last = torch.full((2,), schedule.num_steps - 1, dtype=torch.long)
            latents = q_sample(x0, last, eps, schedule=schedule).float()
            tick(1)
    path = slerp(latents[0], latents[1], alpha) if options.mode == "ddim" else lerp(latents[0], latents[1], alpha)
    path[0], path[-1] = latents[0], latents[1]  # the ends are the encodings themselves

    frames = []
    with reporter.progress("decoding", options.frames) as tick:
        for lo in range(0, options.frames, options.batch_size):
            hi = min(lo + options.batch_size, options.frames)
            n = hi - lo
            # noise mode: every frame gets the same noise sequence, so only the mixture changes
            gens = image_generators([options.seed + 2] * n)
            x = sample_batch(
                model, path[lo:hi], schedule=sched, options=decode_options, backend=backend, generators=gens,
                labels=None if labels is None else torch.full((n,), label, dtype=torch.long),  # type: ignore[arg-type]
                progress=lambda i, k, n=n: tick(n / k),
            )
            frames.append(to_uint8(x))
    frames_u8 = np.concatenate(frames)
    scores = (psnr(images[0], frames_u8[0]), psnr(images[1], frames_u8[-1]))
    meta = {
        "options": asdict(options),
        "timesteps": [int(s) for s in schedule.timesteps],
        "model": str(model.path),
        "adm_version": __version__,
    }
    return Interpolation(
        inputs=images, frames=frames_u8, alpha=alpha.numpy(), latents=path.numpy().astype(np.float32),
        psnr=scores, class_label=label, class_source=source, schedule_steps=schedule.num_steps, meta=meta,
    )


# --------------------------------------------------------------------------- outputs


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to replace an earlier interpolation's files unless asked to."""
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out} exists and is not a folder")
    found = [name for name in OUTPUT_FILES if (out / name).exists()]
    if found and not overwrite:
        raise GenerateError(f"{out} already holds {', '.join(found)}; pass --overwrite to replace them")


def write_interpolation(result: Interpolation, out: str | Path, *, sources: tuple[str, str], command: str = "") -> dict:
    """frames.npz (arr_0 frames, arr_1 labels, alpha, latents), strip.png (A, frames, B),
    reconstructions.png (inputs over reconstructions) and summary.json; each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.full(len(result.frames), -1 if result.class_label is None else result.class_label, np.int64)
    arrays = dict(arr_0=result.frames, arr_1=labels, alpha=result.alpha, latents=result.latents)
    _write_atomic(out / "frames.npz", lambda tmp: np.savez(tmp, **arrays))
    save_grid(np.concatenate([result.inputs[:1], result.frames, result.inputs[1:]]), out / "strip.png", nrow=len(result.frames) + 2)
    recon = np.stack([result.inputs[0], result.frames[0], result.inputs[1], result.frames[-1]])
    save_grid(recon, out / "reconstructions.png", nrow=2)
    summary = {
        "inputs": list(sources),
        "psnr_db": {"a": _finite(result.psnr[0]), "b": _finite(result.psnr[1])},
        "class": result.class_label,
        "class_source": result.class_source,
        "steps": result.schedule_steps,
        "frames": len(result.frames),
        "command": command,
        **result.meta,
    }
    _write_atomic(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def _write_atomic(path: Path, write) -> None:
    """`write(tmp)` to a temporary name beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
