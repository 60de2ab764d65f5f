"""Figures for the training-evidence pipeline, drawn with PIL only (no matplotlib).

    python bench/train_evidence/plot.py DIR        # (re)draw DIR/figures/*.png from DIR's runs

Reads DIR/diffusion/metrics.jsonl, DIR/classifier/metrics.jsonl, DIR/clean/metrics.jsonl and,
when present, DIR/judge.json (written by run.py), and writes:

    figures/diffusion_loss.png            loss and mse (log y) | vb (log y) vs step
    figures/diffusion_loss_quartiles.png  loss and vb per t quartile (q0 = smallest t) vs step
    figures/classifier_accuracy.png       train / val top-1 of both classifiers | val top-1 per t quartile
    figures/guidance_sweep.png            judge accuracy and diversity vs guidance scale

`line_chart` is a small general-purpose plotter: panels side by side, each with its own series,
linear or log y, nice ticks with numbers, grid, legend, markers for sparse series. It draws at 2x
and downsamples, which gives anti-aliased lines and text.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

__all__ = ["Panel", "Series", "line_chart", "make_figures", "read_metrics"]

PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
SS = 2  # supersampling factor


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: tuple[int, int, int] | None = None
    dashed: bool = False
    markers: bool | None = None  # None: markers when the series has few points


@dataclass
class Panel:
    title: str
    series: list[Series]
    ylog: bool = False
    ylabel: str = ""
    xlabel: str = "step"
    ylim: tuple[float, float] | None = None
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label): dashed reference lines
    xticks: Sequence[float] | None = None  # explicit x ticks (e.g. the guidance scales)


# ----------------------------------------------------------------------------- fonts and ticks


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_ticks(lo: float, hi: float, target: int = 6, *, integer: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    step = _nice_step(hi - lo, target)
    if integer:
        step = max(step, 1.0)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades; with 1-2-5 subdivisions when the range spans few decades."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = b - a
    mults = (1, 2, 5) if decades <= 3 else (1,)
    if decades <= 1:
        mults = (1, 2, 3, 5, 7)
    ticks = [m * 10**e for e in range(a, b + 1) for m in mults]
    ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if decades > 8:
        ticks = [t for t in ticks if round(math.log10(t)) % 2 == 0]
    return ticks


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 and float(v).is_integer():
        if a >= 1e6:
            return f"{v / 1e6:g}M"
        return f"{v / 1000:g}k"
    if a < 1e-3 or a >= 1e6:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    return f"{v:.4g}"


# ----------------------------------------------------------------------------- drawing


def _finite_points(s: Series, ylog: bool) -> list[tuple[float, float]]:
    pts = []
    for x, y in zip(s.x, s.y):
        if x is None or y is None:
            continue
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)) or (ylog and y <= 0):
            continue
        pts.append((x, y))
    return pts


def _dashed_line(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill, width: int, dash: int) -> None:
    for (x0, y0), (x1, y1) in pairwise(pts):
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        n = max(int(length // dash), 1)
        for i in range(0, n, 2):
            a, b = i / n, min((i + 1) / n, 1.0)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=fill, width=width)


def _draw_panel(draw: ImageDraw.ImageDraw, panel: Panel, box: tuple[int, int, int, int]) -> None:
    """Draw one panel into box = (left, top, right, bottom) of the (supersampled) canvas."""
    f_title, f_tick, f_label, f_legend = _font(15 * SS), _font(12 * SS), _font(13 * SS), _font(12 * SS)
    left, top, right, bottom = box
    ml, mr, mt, mb = 78 * SS, 14 * SS, 34 * SS, 50 * SS
    px0, py0, px1, py1 = left + ml, top + mt, right - mr, bottom - mb

    # panel title
    tw = draw.textlength(panel.title, font=f_title)
    draw.text(((px0 + px1) / 2 - tw / 2, top + 8 * SS), panel.title, fill=(20, 20, 20), font=f_title)

    data = [(s, _finite_points(s, panel.ylog)) for s in panel.series]
    xs = [p[0] for _, pts in data for p in pts] + list(panel.xticks or [])
    ys = [p[1] for _, pts in data for p in pts] + [y for y, _ in panel.hlines if not panel.ylog or y > 0]
    if not xs or not ys:
        draw.rectangle([px0, py0, px1, py1], outline=(90, 90, 90), width=SS)
        msg = "no data"
        draw.text(((px0 + px1) / 2 - draw.textlength(msg, font=f_label) / 2, (py0 + py1) / 2), msg, fill=(120, 120, 120), font=f_label)
        return

    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    if panel.xticks:
        pad = 0.05 * (xhi - xlo)
        xlo, xhi = xlo - pad, xhi + pad
    if panel.ylim is not None:
        ylo, yhi = panel.ylim
    elif panel.ylog:
        lo, hi = math.log10(min(ys)), math.log10(max(ys))
        if hi - lo < 0.2:
            lo, hi = lo - 0.1, hi + 0.1
        pad = 0.05 * (hi - lo)
        ylo, yhi = 10 ** (lo - pad), 10 ** (hi + pad)
    else:
        lo, hi = min(ys), max(ys)
        if hi == lo:
            lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)
        pad = 0.06 * (hi - lo)
        ylo, yhi = lo - pad, hi + pad

    def X(x: float) -> float:
        return px0 + (x - xlo) / (xhi - xlo) * (px1 - px0)

    def Y(y: float) -> float:
        if panel.ylog:
            f = (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        else:
            f = (y - ylo) / (yhi - ylo)
        return py1 - f * (py1 - py0)

    # grid, ticks, labels
    yt = log_ticks(ylo, yhi) if panel.ylog else linear_ticks(ylo, yhi, 6)
    if panel.ylog and len(yt) < 2:
        yt = [ylo, yhi]
    for v in yt:
        y = Y(v)
        if py0 - 1 <= y <= py1 + 1:
            draw.line([(px0, y), (px1, y)], fill=(228, 228, 228), width=SS)
            draw.line([(px0 - 5 * SS, y), (px0, y)], fill=(60, 60, 60), width=SS)
            label = fmt_num(v)
            lw = draw.textlength(label, font=f_tick)
            draw.text((px0 - 8 * SS - lw, y - 8 * SS), label, fill=(40, 40, 40), font=f_tick)
    xt = list(panel.xticks) if panel.xticks else linear_ticks(xlo, xhi, 6, integer=panel.xlabel == "step")
    for v in xt:
        x = X(v)
        if px0 - 1 <= x <= px1 + 1:
            draw.line([(x, py0), (x, py1)], fill=(236, 236, 236), width=SS)
            draw.line([(x, py1), (x, py1 + 5 * SS)], fill=(60, 60, 60), width=SS)
            label = fmt_num(v)
            lw = draw.textlength(label, font=f_tick)
            draw.text((x - lw / 2, py1 + 7 * SS), label, fill=(40, 40, 40), font=f_tick)
    draw.rectangle([px0, py0, px1, py1], outline=(90, 90, 90), width=SS)
    if panel.xlabel:
        lw = draw.textlength(panel.xlabel, font=f_label)
        draw.text(((px0 + px1) / 2 - lw / 2, py1 + 26 * SS), panel.xlabel, fill=(30, 30, 30), font=f_label)
    if panel.ylabel:
        # vertical label: draw on a small image and rotate
        lw = int(draw.textlength(panel.ylabel, font=f_label)) + 4
        tmp = Image.new("L", (lw, 18 * SS), 0)
        ImageDraw.Draw(tmp).text((2, 0), panel.ylabel, fill=255, font=f_label)
        tmp = tmp.rotate(90, expand=True)
        canvas = draw._image  # type: ignore[attr-defined]
        canvas.paste((30, 30, 30), (left + 4 * SS, int((py0 + py1) / 2 - tmp.size[1] / 2)), tmp)

    # reference lines (named in the legend)
    ref_colors = [(110, 110, 110), (170, 170, 170), (60, 60, 60)]
    refs = []
    for i, (v, label) in enumerate(panel.hlines):
        if panel.ylog and v <= 0:
            continue
        y = Y(v)
        if py0 <= y <= py1:
            color = ref_colors[i % len(ref_colors)]
            _dashed_line(draw, [(px0, y), (px1, y)], color, SS, 5 * SS)
            refs.append((label, color, True))

    # series (clipped to the plot box by drawing on a layer)
    layer = Image.new("RGBA", draw._image.size, (0, 0, 0, 0))  # type: ignore[attr-defined]
    ld = ImageDraw.Draw(layer)
    for i, (s, pts) in enumerate(data):
        color = s.color or PALETTE[i % len(PALETTE)]
        xy = [(X(x), Y(y)) for x, y in sorted(pts)]
        if len(xy) >= 2:
            if s.dashed:
                _dashed_line(ld, xy, color + (255,), 2 * SS, 5 * SS)
            else:
                ld.line(xy, fill=color + (255,), width=2 * SS, joint="curve")
        show = s.markers if s.markers is not None else len(xy) <= 25
        if show:
            r = 3 * SS
            for x, y in xy:
                ld.ellipse([x - r, y - r, x + r, y + r], fill=color + (255,))
    mask = Image.new("L", layer.size, 0)
    ImageDraw.Draw(mask).rectangle([px0, py0, px1, py1], fill=255)
    alpha = ImageChops.darker(layer.getchannel("A"), mask)
    draw._image.paste(layer.convert("RGB"), (0, 0), alpha)  # type: ignore[attr-defined]

    # legend (top-right inside the plot; bottom-right when the data sit high at the right)
    labels = [(s.label, s.color or PALETTE[i % len(PALETTE)], s.dashed) for i, (s, pts) in enumerate(data) if s.label] + refs
    if labels:
        lh = 18 * SS
        w = max(draw.textlength(t, font=f_legend) for t, _, _ in labels) + 40 * SS
        h = lh * len(labels) + 8 * SS
        lx1, ly0 = px1 - 8 * SS, py0 + 8 * SS
        # choose the corner with fewer points under it
        corners = {"tr": (lx1 - w, ly0), "br": (lx1 - w, py1 - 8 * SS - h), "tl": (px0 + 8 * SS, ly0), "bl": (px0 + 8 * SS, py1 - 8 * SS - h)}

        def crowd(c):
            cx, cy = corners[c]
            inside = sum(1 for _, pts in data for x, y in pts if cx <= X(x) <= cx + w and cy <= Y(y) <= cy + h)
            # segments crossing the box count too (sampled along each polyline)
            for _, pts in data:
                q = sorted(pts)
                for (xa, ya), (xb, yb) in pairwise(q):
                    for k in range(1, 8):
                        f = k / 8
                        xx, yy = X(xa + (xb - xa) * f), Y(ya + (yb - ya) * f)
                        inside += cx <= xx <= cx + w and cy <= yy <= cy + h
            return inside

        cx, cy = corners[min(("tr", "br", "tl", "bl"), key=crowd)]
        draw.rectangle([cx, cy, cx + w, cy + h], fill=(255, 255, 255), outline=(180, 180, 180), width=SS)
        for j, (text, color, dashed) in enumerate(labels):
            yy = cy + 4 * SS + j * lh + lh / 2
            if dashed:
                _dashed_line(draw, [(cx + 8 * SS, yy), (cx + 30 * SS, yy)], color, 2 * SS, 4 * SS)
            else:
                draw.line([(cx + 8 * SS, yy), (cx + 30 * SS, yy)], fill=color, width=3 * SS)
            draw.text((cx + 36 * SS, yy - 8 * SS), text, fill=(30, 30, 30), font=f_legend)


def line_chart(path: str | Path, panels: list[Panel], *, title: str = "", size: tuple[int, int] = (900, 500), note: str = "") -> Path:
    """Write a PNG with `panels` side by side (and an optional overall title / footnote)."""
    W, H = size[0] * SS, size[1] * SS
    img = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    top = 0
    if title:
        f = _font(17 * SS)
        tw = draw.textlength(title, font=f)
        draw.text((W / 2 - tw / 2, 8 * SS), title, fill=(0, 0, 0), font=f)
        top = 32 * SS
    bottom = H
    if note:
        f = _font(11 * SS)
        draw.text((10 * SS, H - 18 * SS), note, fill=(90, 90, 90), font=f)
        bottom = H - 18 * SS
    n = max(len(panels), 1)
    width = W / n
    for i, panel in enumerate(panels):
        _draw_panel(draw, panel, (int(i * width), top, int((i + 1) * width), bottom))
    out = img.resize(size, Image.LANCZOS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


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
