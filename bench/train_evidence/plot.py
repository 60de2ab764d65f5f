"""Figures for the training-evidence pipeline, drawn with PIL only (no matplotlib).

    python bench/train_evidence/plot.py DIR        # (re)draw DIR/figures/*.png from DIR's runs

Reads DIR/diffusion/metrics.jsonl, DIR/classifier/metrics.jsonl, DIR/clean/metrics.jsonl and,
when present, DIR/judge.json (written by run.py), and writes:

    figures/diffusion_loss.png            loss and mse (log y) | vb (log y) vs step
    figures/diffusion_loss_quartiles.png  loss and vb per t quartile (q0 = smallest t) vs step
    figures/classifier_accuracy.png       train / val top-1 of both classifiers | val top-1 per t quartile
    figures/guidance_sweep.png            judge accuracy and diversity vs guidance scale

The drawing (`line_chart`, `Panel`, `Series`) is the library's `adm_cli.charts`, which `adm plot`
uses too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from PIL import Image  # noqa: F401 - run.py builds its grids with plot.Image

from adm_cli.charts import PALETTE, Panel, Series, line_chart
from adm_cli.charts import font as _font  # noqa: F401 - run.py's grid captions

__all__ = ["Panel", "Series", "line_chart", "make_figures", "read_metrics"]


# ----------------------------------------------------------------------------- the pipeline's figures


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict], key: str, label: str | None = None, **kw) -> Series:
    pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return Series(label if label is not None else key, [p[0] for p in pts], [p[1] for p in pts], **kw)


def make_figures(root: str | Path) -> list[Path]:
    """Draw every figure whose data exists under `root`; returns the written paths."""
    root = Path(root)
    figs = root / "figures"
    written: list[Path] = []
    diff = read_metrics(root / "diffusion" / "metrics.jsonl")
    if diff:
        last = diff[-1]
        note = f"{last['step']} steps, {last.get('images', 0)} images seen, {last.get('elapsed_s', 0) / 60:.1f} min"
        written.append(line_chart(figs / "diffusion_loss.png", [
            Panel("loss (hybrid) and mse", [_series(diff, "loss"), _series(diff, "mse")], ylog=True, ylabel="per-image loss (log)"),
            Panel("vb (L_vlb term)", [_series(diff, "vb", color=PALETTE[2])], ylog=True, ylabel="bits/dim x T/1000 (log)"),
        ], title="Diffusion training loss", note=note))
        quart = ["t in [0, T/4)", "[T/4, T/2)", "[T/2, 3T/4)", "[3T/4, T)"]
        written.append(line_chart(figs / "diffusion_loss_quartiles.png", [
            Panel("loss per t quartile", [_series(diff, f"loss_q{q}", quart[q]) for q in range(4)], ylog=True, ylabel="loss (log)"),
            Panel("vb per t quartile", [_series(diff, f"vb_q{q}", quart[q]) for q in range(4)], ylog=True, ylabel="vb (log)"),
        ], title="Diffusion loss by timestep quartile (q0: least noise)", note=note))

    clf = read_metrics(root / "classifier" / "metrics.jsonl")
    clean = read_metrics(root / "clean" / "metrics.jsonl")
    if clf or clean:
        acc = [
            _series(clf, "acc@1", "noise-aware: train", color=PALETTE[0], dashed=True),
            _series(clf, "val_acc@1", "noise-aware: val", color=PALETTE[0]),
            _series(clean, "acc@1", "clean (judge): train", color=PALETTE[3], dashed=True),
            _series(clean, "val_acc@1", "clean (judge): val", color=PALETTE[3]),
        ]
        quart = ["val t in [0, T/4)", "[T/4, T/2)", "[T/2, 3T/4)", "[3T/4, T)"]
        written.append(line_chart(figs / "classifier_accuracy.png", [
            Panel("top-1 accuracy", [s for s in acc if len(s.x)], ylim=(0, 1.02), ylabel="accuracy", hlines=[(0.1, "chance")]),
            Panel("noise-aware classifier: val top-1 per t quartile", [_series(clf, f"val_acc@1_q{q}", quart[q]) for q in range(4)],
                  ylim=(0, 1.02), ylabel="accuracy", hlines=[(0.1, "chance")]),
        ], title="Classifier training"))

    judge_path = root / "judge.json"
    if judge_path.is_file():
        judge = json.loads(judge_path.read_text())
        rows = judge.get("scales", [])
        scales = [r["scale"] for r in rows]
        hl_acc = [(judge["real_test_accuracy"], f"judge on real test: {judge['real_test_accuracy']:.3f}")] if judge.get("real_test_accuracy") is not None else []
        hl_div = [(judge["real_diversity"], f"real test images: {judge['real_diversity']:.2f}")] if judge.get("real_diversity") is not None else []
        written.append(line_chart(figs / "guidance_sweep.png", [
            Panel("clean-judge accuracy on samples", [Series("requested class = judged class", scales, [r["accuracy"] for r in rows], markers=True)],
                  ylim=(0, 1.02), xlabel="classifier guidance scale s", ylabel="accuracy", hlines=hl_acc + [(0.1, "chance")], xticks=scales),
            Panel("diversity: mean pairwise L2 within a class", [Series("samples", scales, [r["diversity"] for r in rows], color=PALETTE[1], markers=True)],
                  xlabel="classifier guidance scale s", ylabel="L2 distance ([0,1] pixels)", hlines=hl_div, xticks=scales),
        ], title=f"Guidance sweep ({judge.get('samples_per_class')} samples per class, DDIM {judge.get('ddim')})"))
    return written


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args and args[0] in ("-h", "--help") else 2
    for p in make_figures(args[0]):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
