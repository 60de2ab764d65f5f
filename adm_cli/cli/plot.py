"""`adm plot`: training curves of one or more runs as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from adm_cli.cli import options as o
from adm_cli.cli.errors import UserError, check_writable, user_errors
from adm_cli.reporting import Reporter, stdout_line

EXAMPLE = """
Examples:

  adm plot runs/faces --out curves.png

  adm plot runs/faces-lr1e-4 runs/faces-lr3e-4 --out lr.png --smooth 20 --overwrite

  adm plot runs/faces --out q.png --quantities loss_q0,loss_q3,vb,grad_norm

One panel per quantity against the step, the runs overlaid in one colour each and named by their
directory. QUANTITIES are metrics.jsonl keys: loss, loss_q0..loss_q3 (t quartiles, q0 least
noise), mse, vb, mse_q0.., vb_q0.., grad_norm, lr, images_per_s (img/s), loss_scale; classifier
runs: acc@1, acc@5, val_loss, val_acc@1, ... Default: loss, its quartiles, grad_norm, lr and
images_per_s (classifier runs: loss, acc@1, val_acc@1, grad_norm, lr, images_per_s). Losses are
drawn on a log scale; a quantity no run logged is left out. Works on a run still training.
"""

Runs = Annotated[list[Path], typer.Argument(help="run directories (each with metrics.jsonl)", metavar="RUN", show_default=False)]
Out = Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")]
Smooth = Annotated[int, typer.Option("--smooth", help="moving average over N log lines (1: as logged)", callback=o.positive)]
Quantities = Annotated[Optional[str], typer.Option("--quantities", help="comma-separated metrics.jsonl keys, e.g. loss,grad_norm,lr")]


def _check_out(out: Path, overwrite: bool) -> None:
    """Before any work: a .png in an existing folder that replaces nothing it should not."""
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must be a .png file")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    if not out.absolute().parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out file")
    check_writable(out)


def _labels(runs: list[Path]) -> list[str]:
    """Run directory names; the paths as given where two runs share a name."""
    names = [run.resolve().name or str(run) for run in runs]
    return [str(run) if names.count(name) > 1 else name for run, name in zip(runs, names)]


@user_errors
def plot(
    runs: Runs,
    out: Out,
    smooth: Smooth = 1,
    quantities: Quantities = None,
    overwrite: o.Overwrite = False,
    quiet: o.Quiet = False,
) -> None:
    """Training curves of runs as a PNG: loss (per t quartile too), gradient norm, learning rate, images/s."""
    from adm_cli.charts import write_png
    from adm_cli.train.plot import plot_runs, read_run

    _check_out(out, overwrite)
    reporter = Reporter(quiet=quiet)
    asked = [q.strip() for q in quantities.split(",") if q.strip()] if quantities is not None else None
    if asked is not None and not asked:
        raise UserError("--quantities takes comma-separated metrics.jsonl keys, e.g. loss,grad_norm")
    metrics = [read_run(run, warn=reporter.warn) for run in runs]
    image = plot_runs(metrics, quantities=asked, smooth=smooth, warn=reporter.warn, labels=_labels(runs))
    write_png(out, image)
    reporter.info(f"{image.width}x{image.height} pixels, {len(runs)} run(s)")
    stdout_line(str(out))
