"""Training curves of one or more runs, for `adm plot`: each run's metrics.jsonl read leniently,
one panel per quantity against the step (loss, loss per t quartile, gradient norm, learning rate,
images/s; the accuracies of classifier runs), the runs overlaid in one colour each and named in
one legend. Losses are drawn on a log scale when positive; a quantity no run logged is left out.

    runs = [read_run("runs/a"), read_run("runs/b")]
    image = plot_runs(runs, smooth=10)          # a PIL image; charts.write_png(path, image)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adm_cli.charts import PALETTE, Panel, Series, draw_chart, figure_height

__all__ = ["DEFAULT_QUANTITIES", "PlotError", "RunMetrics", "metric_panels", "moving_average", "plot_runs", "read_run",
           "resolve_quantities"]


class PlotError(ValueError):
    """A run that cannot be plotted, or nothing to plot (one-line message)."""


_QUARTILES = ("[0, T/4)", "[T/4, T/2)", "[T/2, 3T/4)", "[3T/4, T)")

# metrics.jsonl key -> panel title (keys not listed are titled by their name)
TITLES: dict[str, str] = {
    "loss": "loss",
    **{f"loss_q{q}": f"loss, t in {_QUARTILES[q]}" for q in range(4)},
    "mse": "mse", "vb": "vb (L_vlb term)",
    **{f"mse_q{q}": f"mse, t in {_QUARTILES[q]}" for q in range(4)},
    **{f"vb_q{q}": f"vb, t in {_QUARTILES[q]}" for q in range(4)},
    "acc@1": "top-1 accuracy (train)", "acc@5": "top-5 accuracy (train)",
    "val_loss": "validation loss", "val_acc@1": "top-1 accuracy (validation)", "val_acc@5": "top-5 accuracy (validation)",
    "grad_norm": "gradient norm", "lr": "learning rate", "images_per_s": "images / s",
}
# The panels drawn when no quantities are asked for, by run kind (run.json); a run without a
# readable run.json gets the diffusion ones.
DEFAULT_QUANTITIES: dict[str, tuple[str, ...]] = {
    "diffusion": ("loss", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "grad_norm", "lr", "images_per_s"),
    "classifier": ("loss", "acc@1", "val_acc@1", "grad_norm", "lr", "images_per_s"),
}
ALIASES = {"img/s": "images_per_s", "grad-norm": "grad_norm"}
PANEL_SIZE = (440, 300)  # pixels per panel
COLUMNS = 3


@dataclass(frozen=True)
class RunMetrics:
    """One run's logged records, one per step (sorted), and what run.json says it is."""

    name: str
    kind: str | None
    records: list[dict[str, Any]]

    def quantities(self) -> set[str]:
        return {k for r in self.records for k, v in r.items() if _number(v) is not None}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_run(path: str | Path, *, warn: Callable[[str], None] = lambda message: None, name: str | None = None) -> RunMetrics:
    """A run directory's metrics.jsonl. The last line may be cut short by a kill and is then
    skipped silently; other unreadable lines are skipped with one warning. No run directory, or
    no record at all, is a PlotError."""
    root = Path(path)
    metrics, run_json = root / "metrics.jsonl", root / "run.json"
    if not root.is_dir() or not (metrics.is_file() or run_json.is_file()):
        raise PlotError(f"{path} is not a run directory (no metrics.jsonl or run.json)")
    if not metrics.is_file():
        raise PlotError(f"{path} has logged no metrics yet (no metrics.jsonl)")
    kind = None
    try:
        kind = json.loads(run_json.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        lines = metrics.read_bytes().split(b"\n")
    except OSError as e:
        raise PlotError(f"cannot read {metrics}: {e.strerror}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    by_step: dict[int, dict[str, Any]] = {}
    bad: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, IndexError):
            if number < len(lines):  # the last line: a write cut short by a kill
                bad.append(number)
            continue
        by_step[step] = record  # a step logged twice (a resume): the later line holds
    if bad:
        warn(f"{metrics}: skipped {len(bad)} unreadable line(s) (line {', '.join(map(str, bad[:3]))}{', ...' if len(bad) > 3 else ''})")
    if not by_step:
        raise PlotError(f"{metrics} holds no metrics yet")
    return RunMetrics(name or root.name, kind, [by_step[s] for s in sorted(by_step)])


def moving_average(y: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean of the last `window` values at each point (fewer at the start)."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or y.size == 0:
        return y
    sums = np.concatenate([[0.0], np.cumsum(y)])  # (N + 1,)
    end = np.arange(1, y.size + 1)
    start = np.maximum(end - window, 0)
    return (sums[end] - sums[start]) / (end - start)


def _is_loss(name: str) -> bool:
    return name.split("_q")[0] in ("loss", "mse", "vb", "val_loss")


def _points(run: RunMetrics, key: str, smooth: int) -> tuple[list[float], list[float]]:
    pts = [(r["step"], v) for r in run.records if (v := _number(r.get(key))) is not None]
    x = [float(s) for s, _ in pts]
    y = moving_average([v for _, v in pts], smooth).tolist()
    return x, y


def resolve_quantities(runs: Sequence[RunMetrics], quantities: Sequence[str] | None,
                       warn: Callable[[str], None] = lambda message: None) -> list[str]:
    """The panels to draw: the asked-for quantities any run logged (the others said once), else
    the defaults of the runs' kinds that any run logged."""
    logged = set().union(*(run.quantities() for run in runs))
    if quantities:
        asked = list(dict.fromkeys(ALIASES.get(q, q) for q in quantities))
        missing = [q for q in asked if q not in logged]
        if len(missing) == len(asked):
            have = ", ".join(sorted(logged - {"step"}))
            raise PlotError(f"no run logged {', '.join(missing)} (they have: {have})")
        if missing:
            warn(f"no run logged {', '.join(missing)}; left out")
        return [q for q in asked if q in logged]
    kinds = [run.kind if run.kind in DEFAULT_QUANTITIES else "diffusion" for run in runs]
    wanted = dict.fromkeys(q for kind in dict.fromkeys(kinds) for q in DEFAULT_QUANTITIES[kind])
    chosen = [q for q in wanted if q in logged]
    if not chosen:
        raise PlotError("the runs logged none of " + ", ".join(wanted))
    return chosen


def metric_panels(runs: Sequence[RunMetrics], quantities: Sequence[str], *, smooth: int = 1) -> list[Panel]:
    """One panel per quantity, one series per run that logged it (run i in PALETTE[i])."""
    panels = []
    for key in quantities:
        series = []
        for i, run in enumerate(runs):
            x, y = _points(run, key, smooth)
            if x:
                series.append(Series("", x, y, color=PALETTE[i % len(PALETTE)]))
        if not series:
            continue
        ylog = _is_loss(key) and all(v > 0 for s in series for v in s.y)
        panels.append(Panel(TITLES.get(key, key), series, ylog=ylog, ylabel=f"{key}{' (log)' if ylog else ''}"))
    return panels


def plot_runs(runs: Sequence[RunMetrics], *, quantities: Sequence[str] | None = None, smooth: int = 1,
              warn: Callable[[str], None] = lambda message: None, labels: Sequence[str] | None = None) -> Image.Image:
    """The figure: `quantities` (default: by run kind) in a grid of up to COLUMNS panels of
    PANEL_SIZE, one legend naming the runs (`labels`, default their directory names)."""
    if not runs:
        raise PlotError("no run to plot")
    panels = metric_panels(runs, resolve_quantities(runs, quantities, warn), smooth=smooth)
    labels = list(labels) if labels is not None else [run.name for run in runs]
    legend = [(label, PALETTE[i % len(PALETTE)]) for i, label in enumerate(labels)]
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    title = "training curves" + (f" (moving average of {smooth} log lines)" if smooth > 1 else "")
    width = columns * PANEL_SIZE[0]
    height = figure_height(rows * PANEL_SIZE[1], width=width, title=title, legend=legend)
    return draw_chart(panels, title=title, size=(width, height), columns=columns, legend=legend)
