"""`adm demo`: the whole system on the built-in shapes in minutes on a CPU — train a tiny
diffusion model and a noise-aware classifier, sample with and without classifier guidance,
write grids, and say where everything is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from adm_cli.backend import make_backend, resolve_device, resolve_precision
from adm_cli.checkpoint import load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, check_writable, user_errors
from adm_cli.data.images import save_grid, to_uint8
from adm_cli.generate import sample_images
from adm_cli.reporting import Reporter, stdout_line
from adm_cli.train.loop import RunOptions
from adm_cli.train.session import DataSpec, build_classifier_configs, build_diffusion_configs, run_training

EXAMPLE = """
Example:

  adm demo --out demo            # about 8 minutes on 2 CPU cores

Then look at demo/unguided.png and demo/guided.png (one row per class), demo/diffusion/previews/,
and continue with e.g. `adm sample demo/diffusion --classifier demo/classifier --guidance 4 -n 64 --out s.npz`.
"""


@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for everything the demo makes (must be new)")] = Path("adm-demo"),
    minutes: Annotated[float, typer.Option("--minutes", help="training budget in minutes (diffusion 75%, classifier 25%)", callback=o.positive_number)] = 6.0,
    image_size: Annotated[int, typer.Option("--image-size", help="side of the built-in shapes", callback=o.positive)] = 16,
    guidance: Annotated[float, typer.Option("--guidance", "-s", help="classifier guidance scale for the guided grid", callback=o.finite)] = 4.0,
    per_class: Annotated[int, typer.Option("--per-class", help="samples per class in each grid", callback=o.count)] = 8,
    steps: Annotated[int, typer.Option("--steps", help="DDPM steps (respaced) for the grids; the learned variance makes few steps work", callback=o.positive)] = 100,
    device: o.Device = None,
    quiet: o.Quiet = False,
) -> None:
    """Train, guide and sample a tiny model on the built-in shapes, end to end."""
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; choose a new folder")
    check_writable(out / "x")
    reporter = Reporter(quiet=quiet)
    started = time.monotonic()
    data = DataSpec("synthetic", image_size=image_size)
    precision = resolve_precision("auto", resolve_device(device))

    def diffusion_configs(d) -> dict[str, Any]:
        spec, train = build_diffusion_configs(
            d, preset="tiny", unet={}, diffusion={}, class_cond=True,
            train={"batch_size": 32, "lr": 5e-4, "ema_rates": (0.999,), "precision": precision},
        )
        return {"unet": spec.unet.to_dict(), "diffusion": spec.diffusion.to_dict(), "train": train.to_dict()}

    reporter.info(f"1/3 training a diffusion model on the built-in shapes ({minutes * 0.75:.1f} min)")
    run_training(
        "diffusion", out / "diffusion", data_spec=data, make_configs=diffusion_configs,
        options=RunOptions(minutes=minutes * 0.75, log_every=100, preview_every=400, save_every=10**9),
        device=device, compile=False, reporter=reporter, resume=False, command="adm demo", preview_images=16,
    )
    model = load_model(out / "diffusion")

    def classifier_configs(d) -> dict[str, Any]:
        config, train = build_classifier_configs(
            d, classifier={"model_channels": 32, "num_res_blocks": 1}, diffusion=model.diffusion,
            train={"batch_size": 32, "lr": 1e-3, "precision": precision},
        )
        return {"classifier": config.to_dict(), "diffusion": model.diffusion.to_dict(), "train": train.to_dict()}

    reporter.info(f"2/3 training a noise-aware classifier ({minutes * 0.25:.1f} min)")
    run_training(
        "classifier", out / "classifier", data_spec=data, make_configs=classifier_configs,
        options=RunOptions(minutes=minutes * 0.25, log_every=100, save_every=10**9),
        device=device, compile=False, reporter=reporter, resume=False, command="adm demo", val_fraction=0.02,
    )
    classifier = load_model(out / "classifier")

    reporter.info(f"3/3 sampling {per_class} images per class, DDPM {steps} steps, without and with guidance (scale {guidance:g})")
    backend = make_backend(device, precision)
    classifier.model = backend.prepare(classifier.model)
    k = model.config.num_classes or 1
    labels = torch.arange(k).repeat_interleave(per_class)  # (k * per_class,): one row per class
    agreement = {}
    for name, scale in (("unguided", 0.0), ("guided", guidance)):
        x0, _ = sample_images(
            model, len(labels), sampler="ddpm", respacing=str(steps), labels=labels, seed=0, backend=backend,
            classifier=classifier if scale else None, guidance_scale=scale,
        )
        images = to_uint8(x0)
        save_grid(images, out / f"{name}.png", nrow=per_class)
        np.savez(out / f"{name}.npz", arr_0=images, arr_1=labels.numpy())
        with torch.no_grad(), backend.autocast():  # the classifier's verdict on the final images (t = 0)
            logits = classifier.model(x0.to(backend.device), torch.zeros(len(labels), dtype=torch.long, device=backend.device))
        agreement[name] = float((logits.argmax(1).cpu() == labels).float().mean())
    elapsed = (time.monotonic() - started) / 60
    reporter.info(
        f"done in {elapsed:.1f} min. The classifier (at t = 0) finds the requested shape in "
        f"{agreement['unguided']:.0%} of unguided and {agreement['guided']:.0%} of guided samples "
        f"(it is the guiding classifier, so the second figure flatters guidance)."
    )
    for line in (
        f"grids        {out / 'unguided.png'}  {out / 'guided.png'}  (one row per class: {', '.join(_names(k))})",
        f"samples      {out / 'unguided.npz'}  {out / 'guided.npz'}",
        f"diffusion    {out / 'diffusion'}  (checkpoints/, previews/, metrics.jsonl)",
        f"classifier   {out / 'classifier'}",
    ):
        stdout_line(line)


def _names(k: int) -> list[str]:
    from adm_cli.data.synthetic import CLASS_NAMES

    return list(CLASS_NAMES[:k])
