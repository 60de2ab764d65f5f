"""Line charts drawn with PIL alone (no matplotlib): panels in a grid, each with its own series,
linear or log y, nice ticks with numbers, a grid, a legend per panel or one for the figure,
markers for sparse series. Drawn at 2x and downsampled, which anti-aliases lines and text.

    image = draw_chart([Panel("loss", [Series("run-a", steps, losses)], ylog=True)], columns=2)
    write_png(path, image)                 # temporary name + rename: whole or absent

Used by `adm plot` (training curves) and the bench scripts' figures. Imports nothing from adm
but `files`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from adm_cli.files import write_bytes_atomic

__all__ = ["PALETTE", "Panel", "Series", "draw_chart", "figure_height", "font", "line_chart", "png_bytes", "write_png"]

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


def font(size: int) -> ImageFont.ImageFont:
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


def _draw_panel(image: Image.Image, panel: Panel, box: tuple[int, int, int, int]) -> None:
    """Draw one panel into box = (left, top, right, bottom) of the (supersampled) canvas."""
    draw = ImageDraw.Draw(image)
    f_title, f_tick, f_label, f_legend = font(15 * SS), font(12 * SS), font(13 * SS), font(12 * SS)
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
        image.paste((30, 30, 30), (left + 4 * SS, int((py0 + py1) / 2 - tmp.size[1] / 2)), tmp)

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

    # series, clipped to the plot box: drawn on a layer of the box's size, pasted through its alpha
    ox, oy = int(px0), int(py0)
    layer = Image.new("RGBA", (int(px1) - ox + 1, int(py1) - oy + 1), (0, 0, 0, 0))
    ld = ImageDraw.Draw(layer)
    for i, (s, pts) in enumerate(data):
        color = s.color or PALETTE[i % len(PALETTE)]
        xy = [(X(x) - ox, Y(y) - oy) for x, y in sorted(pts)]
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
    image.paste(layer.convert("RGB"), (ox, oy), layer.getchannel("A"))

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


def draw_chart(
    panels: list[Panel],
    *,
    title: str = "",
    size: tuple[int, int] = (900, 500),
    columns: int | None = None,
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
    note: str = "",
) -> Image.Image:
    """`panels` in a grid of `columns` (default: one row) on a `size` canvas, with an optional
    title, one legend for the whole figure (label, colour) under it, and a footnote."""
    W, H = size[0] * SS, size[1] * SS
    img = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    top = 0
    if title:
        f = font(17 * SS)
        tw = draw.textlength(title, font=f)
        draw.text((W / 2 - tw / 2, 8 * SS), title, fill=(0, 0, 0), font=f)
        top = 32 * SS
    if legend:
        top = _figure_legend(draw, legend, top, W)
    bottom = H
    if note:
        f = font(11 * SS)
        draw.text((10 * SS, H - 18 * SS), note, fill=(90, 90, 90), font=f)
        bottom = H - 18 * SS
    columns = max(1, min(columns or len(panels), len(panels) or 1))
    rows = max(1, math.ceil(len(panels) / columns))
    width, height = W / columns, (bottom - top) / rows
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        _draw_panel(img, panel, (int(c * width), int(top + r * height), int((c + 1) * width), int(top + (r + 1) * height)))
    return img.resize(size, Image.LANCZOS)


LEGEND_ROW = 24  # pixels per row of the figure legend


def _legend_rows(draw: ImageDraw.ImageDraw, legend: Sequence[tuple[str, tuple[int, int, int]]], W: float) -> list[list[tuple[str, tuple[int, int, int], float]]]:
    """The legend's items (label, colour, width) wrapped into rows that fit the canvas width W."""
    f = font(13 * SS)
    rows: list[list[tuple[str, tuple[int, int, int], float]]] = [[]]
    for text, color in legend:
        w = 50 * SS + draw.textlength(text, font=f)
        if rows[-1] and sum(item[2] for item in rows[-1]) + w > W - 20 * SS:
            rows.append([])
        rows[-1].append((text, color, w))
    return rows


def _figure_legend(draw: ImageDraw.ImageDraw, legend: Sequence[tuple[str, tuple[int, int, int]]], top: int, W: int) -> int:
    """Swatches and labels in centred rows from `top`; returns the y below them."""
    f = font(13 * SS)
    y = top + 4 * SS
    for row in _legend_rows(draw, legend, W):
        x = (W - sum(item[2] for item in row)) / 2
        for text, color, w in row:
            yy = y + LEGEND_ROW * SS / 2
            draw.line([(x, yy), (x + 26 * SS, yy)], fill=color, width=4 * SS)
            draw.text((x + 32 * SS, yy - 8 * SS), text, fill=(30, 30, 30), font=f)
            x += w
        y += LEGEND_ROW * SS
    return int(y + 4 * SS)


def figure_height(body: int, *, width: int, title: str = "", legend: Sequence[tuple[str, tuple[int, int, int]]] = ()) -> int:
    """The height of a `width`-pixel figure whose panels take `body` pixels, with its title and legend."""
    header = 32 if title else 0
    if legend:
        rows = _legend_rows(ImageDraw.Draw(Image.new("RGB", (1, 1))), legend, width * SS)
        header += LEGEND_ROW * len(rows) + 8
    return body + header


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | Path, image: Image.Image) -> Path:
    """Write `image` as PNG through a temporary name and a rename (whole or absent)."""
    write_bytes_atomic(path, png_bytes(image))
    return Path(path)


def line_chart(path: str | Path, panels: list[Panel], *, title: str = "", size: tuple[int, int] = (900, 500), note: str = "",
               columns: int | None = None) -> Path:
    """Write a PNG with `panels` side by side (or in `columns`), creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, draw_chart(panels, title=title, size=size, note=note, columns=columns))
