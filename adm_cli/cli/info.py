"""`adm info`: what a checkpoint holds."""

from __future__ import annotations

import json

from adm_cli.checkpoint import load_model
from adm_cli.cli import options as o
from adm_cli.cli.errors import user_errors
from adm_cli.reporting import stdout_line


@user_errors
def info(
    checkpoint: o.Checkpoint,
    json_out: o.Json = False,
    image_size: o.ImageSize = None,
    num_heads: o.NumHeads = None,
    num_head_channels: o.NumHeadChannels = None,
    attention_order: o.AttentionOrder = None,
    schedule: o.Schedule = None,
    diffusion_steps: o.DiffusionSteps = None,
) -> None:
    """Print a checkpoint's kind, configuration, step and parameter count.

    Example: adm info 256x256_diffusion.pt --json
    """
    overrides = o.overrides(image_size, num_heads, num_head_channels, attention_order, schedule, diffusion_steps)
    loaded = load_model(checkpoint, overrides=overrides)
    record = {
        "path": str(checkpoint),
        "kind": loaded.kind,
        "source": loaded.source,
        "preset": loaded.preset,
        "step": loaded.step,
        "parameters": loaded.num_parameters,
        "config": loaded.config.to_dict(),
        "diffusion": loaded.diffusion.to_dict() if loaded.diffusion is not None else None,
    }
    if json_out:
        stdout_line(json.dumps(record, indent=2))
        return
    origin = "adm checkpoint" if loaded.source == "adm" else "guided-diffusion state dict"
    if loaded.preset:
        origin += f" (published configuration {loaded.preset})"
    stdout_line(f"{checkpoint}: {loaded.kind} model, {origin}")
    stdout_line(f"  parameters  {loaded.num_parameters:,}")
    if loaded.step is not None:
        stdout_line(f"  step        {loaded.step}")
    for section, cfg in (("network", record["config"]), ("diffusion", record["diffusion"])):
        if cfg:
            stdout_line(f"  {section}:")
            for k, v in cfg.items():
                stdout_line(f"    {k:24s}{v}")
