"""Small SVG charts drawn in the gateway from a job's summary and per-sample table.

Pure Python (no matplotlib, no torch): the gateway image stays slim and the pages work
offline. Every text that reaches the SVG goes through ``markupsafe.escape``, so a column
name or a job name can never inject markup. The charts are served as ``image/svg+xml``
files (``<img src=...>``), where the browser runs no script at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import escape

WIDTH, HEIGHT = 560, 330
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 34, 52
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Series:
    label: str
    x: Sequence[float | None]
    y: Sequence[float | None]
    yerr: Sequence[float | None] | None = None
    dashed: bool = False
    color: str | None = None


@dataclass
class Chart:
    """A finished chart: ``name`` is its file name under /ui/jobs/{id}/plots/."""

    name: str
    title: str
    svg: str
    notes: list[str] = field(default_factory=list)


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return ticks


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> None:
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(v)
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self) -> list[float]:
        if not self.log:
            return nice_ticks(self.lo, self.hi)
        lo, hi = math.floor(self.lo), math.ceil(self.hi)
        decades = [10.0**e for e in range(lo, hi + 1)]
        inside = [t for t in decades if self.lo - 1e-9 <= math.log10(t) <= self.hi + 1e-9]
        if len(inside) >= 2:
            return inside
        extra = [m * 10.0**e for e in range(lo, hi + 1) for m in (1, 2, 5)]
        return [t for t in extra if self.lo - 1e-9 <= math.log10(t) <= self.hi + 1e-9]


def _text(x: float, y: float, s: str, *, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-family="sans-serif" fill="#222"{extra}>{escape(s)}</text>'
    )


def _frame(
    title: str, xs: _Scale, ys: _Scale, xlabel: str, ylabel: str, xticks: list[float] | None
) -> list[str]:
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    out = [_text(WIDTH / 2, 20, title, size=13)]
    for t in ys.ticks():
        py = ys(t)
        out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#e5e5e5"/>')
        out.append(_text(x0 - 6, py + 4, fmt(t), anchor="end", size=10))
    for t in xticks if xticks is not None else xs.ticks():
        px = xs(t)
        out.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + 4}" stroke="#444"/>')
        out.append(_text(px, y0 + 16, fmt(t), size=10))
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>')
    out.append(_text((x0 + x1) / 2, HEIGHT - 12, xlabel))
    out.append(_text(14, (y0 + y1) / 2, ylabel, extra=f' transform="rotate(-90 14 {(y0 + y1) / 2:.1f})"'))
    return out


def _legend(items: list[tuple[str, str, bool]]) -> tuple[list[str], int]:
    """Legend rows under the x-axis label (never over the data), two per row. -> (parts, height)."""
    out = []
    columns = 1 if len(items) <= 2 else 2
    col_width = (WIDTH - LEFT) // columns
    for i, (label, color, dashed) in enumerate(items):
        x = LEFT + (i % columns) * col_width
        y = HEIGHT + 4 + (i // columns) * 15
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{color}" stroke-width="2.5"{dash}/>'
        )
        out.append(_text(x + 23, y + 4, label, anchor="start", size=10))
    rows = -(-len(items) // columns)
    return out, rows * 15 + 6 if items else 0


def _svg(parts: list[str], title: str, legend: tuple[list[str], int] = ([], 0)) -> str:
    height = HEIGHT + legend[1]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img"><title>{escape(title)}</title>'
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>'
        + "".join(parts)
        + "".join(legend[0])
        + "</svg>"
    )


def line_chart(
    name: str,
    title: str,
    series: Sequence[Series],
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    ylim: tuple[float | None, float | None] = (None, None),
    xticks_at_data: bool = False,
) -> Chart | None:
    """Lines with markers (and error bars when ``yerr`` is given). None when nothing to draw."""
    pts: list[tuple[Series, list[tuple[float, float, float]]]] = []
    for s in series:
        err: Sequence[float | None] = s.yerr if s.yerr is not None else [0.0] * len(s.y)
        row = []
        for xv, yv, ev in zip(s.x, s.y, err, strict=False):
            if xv is None or yv is None or not (math.isfinite(float(xv)) and math.isfinite(float(yv))):
                continue
            x, y = float(xv), float(yv)
            if (logx and x <= 0) or (logy and y <= 0):
                continue
            e = float(ev) if ev is not None and math.isfinite(float(ev)) else 0.0
            row.append((x, y, e))
        if row:
            pts.append((s, sorted(row)))
    if not pts:
        return None
    all_x = [p[0] for _, row in pts for p in row]
    lows = [p[1] - p[2] for _, row in pts for p in row]
    highs = [p[1] + p[2] for _, row in pts for p in row]
    ylo = ylim[0] if ylim[0] is not None else min(lows)
    yhi = ylim[1] if ylim[1] is not None else max(highs)
    if logy:
        ylo = max(ylo, min(p[1] for _, row in pts for p in row) / 1.5)
    if not logy and ylim[0] is None and ylim[1] is None:
        pad = (yhi - ylo) * 0.08 or 0.05
        ylo, yhi = ylo - pad, yhi + pad
    xs = _Scale(min(all_x), max(all_x), LEFT + 12, WIDTH - RIGHT - 12, log=logx)
    ys = _Scale(ylo, yhi, HEIGHT - BOTTOM, TOP + 4, log=logy)
    xticks = sorted(set(all_x)) if xticks_at_data and len(set(all_x)) <= 12 else None
    parts = _frame(title, xs, ys, xlabel, ylabel, xticks)
    legend = []
    for i, (s, row) in enumerate(pts):
        color = s.color or PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        path = " ".join(f"{xs(x):.1f},{ys(min(max(y, ys_lo(ys)), ys_hi(ys))):.1f}" for x, y, _ in row)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y, e in row:
            px, py = xs(x), ys(y)
            if e > 0:
                lo_y = ys(max(y - e, ys_lo(ys)) if logy else y - e)
                parts.append(
                    f'<line x1="{px:.1f}" y1="{lo_y:.1f}" x2="{px:.1f}" y2="{ys(y + e):.1f}" stroke="{color}"/>'
                )
            if len(row) <= 60:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>')
        legend.append((s.label, color, s.dashed))
    return Chart(name, title, _svg(parts, title, _legend(legend)))


def ys_lo(scale: _Scale) -> float:
    return 10**scale.lo if scale.log else scale.lo


def ys_hi(scale: _Scale) -> float:
    return 10**scale.hi if scale.log else scale.hi


def histogram(
    name: str,
    title: str,
    values: Sequence[float],
    *,
    xlabel: str,
    highlight: Sequence[bool] | None = None,
    labels: tuple[str, str] = ("clean labels", "flipped labels"),
    bins: int = 30,
    log10: bool | None = None,
) -> Chart | None:
    """Counts per bin; with ``highlight`` the highlighted samples are stacked in red on top.

    ``log10``: None picks log10 for positive data spanning more than two decades.
    """
    pairs = [
        (float(v), bool(h))
        for v, h in zip(values, highlight if highlight is not None else [False] * len(values), strict=False)
        if v is not None and math.isfinite(float(v))
    ]
    if not pairs:
        return None
    vals = [v for v, _ in pairs]
    if log10 is None:
        log10 = min(vals) > 0 and max(vals) / min(vals) > 100
    if log10:
        pairs = [(math.log10(v), h) for v, h in pairs if v > 0]
        xlabel = f"log10 {xlabel}"
    lo = min(v for v, _ in pairs)
    hi = max(v for v, _ in pairs)
    xticks: list[float] | None = None
    if not log10 and all(v.is_integer() for v, _ in pairs) and hi - lo <= 60:
        bins = int(hi - lo) + 1  # counts (e.g. forgetting events): one bar per value
        xticks = [t for t in nice_ticks(lo, hi, min(bins, 8)) if float(t).is_integer()] or [lo]
        lo, hi = lo - 0.5, hi + 0.5
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    plain: list[int] = [0] * bins
    marked: list[int] = [0] * bins
    for v, h in pairs:
        b = min(int((v - lo) / width), bins - 1)
        (marked if h else plain)[b] += 1
    top = max(p + m for p, m in zip(plain, marked, strict=True))
    xs = _Scale(lo, hi, LEFT + 4, WIDTH - RIGHT - 4)
    ys = _Scale(0, top * 1.08, HEIGHT - BOTTOM, TOP + 4)
    parts = _frame(title, xs, ys, xlabel, "samples", xticks)
    for i in range(bins):
        x_left, x_right = xs(lo + i * width), xs(lo + (i + 1) * width)
        w = max(x_right - x_left - 1, 1)
        if plain[i]:
            parts.append(
                f'<rect x="{x_left:.1f}" y="{ys(plain[i]):.1f}" width="{w:.1f}" '
                f'height="{ys(0) - ys(plain[i]):.1f}" fill="{PALETTE[0]}"/>'
            )
        if marked[i]:
            parts.append(
                f'<rect x="{x_left:.1f}" y="{ys(plain[i] + marked[i]):.1f}" width="{w:.1f}" '
                f'height="{ys(plain[i]) - ys(plain[i] + marked[i]):.1f}" fill="{PALETTE[1]}"/>'
            )
    n_plain, n_marked = int(sum(plain)), int(sum(marked))
    legend: list[tuple[str, str, bool]] = [(f"{labels[0]} ({n_plain})", PALETTE[0], False)]
    if highlight is not None and n_marked:
        legend.append((f"{labels[1]} ({n_marked})", PALETTE[1], False))
    return Chart(name, title, _svg(parts, title, _legend(legend)))


def bar_chart(
    name: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], Sequence[float | None] | None]],
    *,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Chart | None:
    """Grouped bars: one group per category, one bar per (label, values, errors) series."""
    vals = [v for _, values, _ in series for v in finite(values)]
    if not categories or not vals:
        return None
    lo, hi = ylim if ylim is not None else (min(0.0, min(vals)), max(vals) * 1.1 or 1.0)
    xs = _Scale(0, len(categories), LEFT, WIDTH - RIGHT)
    ys = _Scale(lo, hi, HEIGHT - BOTTOM, TOP + 4)
    parts = _frame(title, xs, ys, "", ylabel, [])
    group = (xs(1) - xs(0)) * 0.8
    bar = group / max(len(series), 1)
    for c, cat in enumerate(categories):
        parts.append(_text(xs(c + 0.5), HEIGHT - BOTTOM + 16, cat, size=11))
        for s, (_, values, errors) in enumerate(series):
            v = values[c] if c < len(values) else None
            if v is None or not math.isfinite(float(v)):
                continue
            x = xs(c) + (xs(1) - xs(0)) * 0.1 + s * bar
            top = ys(max(float(v), lo))
            parts.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar - 2:.1f}" height="{ys(lo) - top:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"/>'
            )
            e = errors[c] if errors is not None and c < len(errors) else None
            if e is not None and math.isfinite(float(e)) and e > 0:
                cx = x + (bar - 2) / 2
                parts.append(
                    f'<line x1="{cx:.1f}" y1="{ys(float(v) - e):.1f}" x2="{cx:.1f}" '
                    f'y2="{ys(float(v) + e):.1f}" stroke="#222"/>'
                )
            parts.append(_text(x + (bar - 2) / 2, top - 4, f"{float(v):.3f}", size=9))
    legend = [(label, PALETTE[i % len(PALETTE)], False) for i, (label, _, _) in enumerate(series)]
    return Chart(name, title, _svg(parts, title, _legend(legend)))
