"""Line charts as inline SVG, drawn on the server: no chart library, nothing to download."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 420
HEIGHT = 150
PAD_LEFT = 44
PAD_BOTTOM = 20
PAD_TOP = 8


@dataclass(frozen=True, slots=True)
class Series:
    title: str
    unit: str
    points: Sequence[tuple[dt.datetime, float]]
    # A fixed top (100 for percentages); None scales to the largest value.
    top: float | None = None


def _nice_top(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 < value:
        step *= 10
    for factor in (1, 2, 5, 10):
        if value <= step * factor:
            return step * factor
    return step * 10


def _label(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(series: Series, start: dt.datetime, end: dt.datetime) -> Markup:
    """An SVG of `series` between `start` and `end`; it scales to its container's width."""
    top = (
        series.top
        if series.top is not None
        else _nice_top(max((v for _, v in series.points), default=0))
    )
    span_s = max((end - start).total_seconds(), 1.0)
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP

    def x(at: dt.datetime) -> float:
        return PAD_LEFT + plot_w * min(max((at - start).total_seconds() / span_s, 0.0), 1.0)

    def y(value: float) -> float:
        return PAD_TOP + plot_h * (1 - min(max(value / top, 0.0), 1.0))

    title = escape(series.title)
    latest = f"{_label(series.points[-1][1])}{series.unit}" if series.points else "no reports yet"
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{title}, latest {escape(latest)}">',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}"'
        f' x2="{WIDTH - 4}" y2="{PAD_TOP + plot_h}"/>',
        f'<line class="grid" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{WIDTH - 4}" y2="{PAD_TOP}"/>',
        f'<text class="tick" x="{PAD_LEFT - 4}" y="{PAD_TOP + 4}" text-anchor="end">'
        f"{_label(top)}{escape(series.unit)}</text>",
        f'<text class="tick" x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
        f'<text class="tick" x="{PAD_LEFT}" y="{HEIGHT - 4}">{start:%H:%M}</text>',
        f'<text class="tick" x="{WIDTH - 4}" y="{HEIGHT - 4}" text-anchor="end">'
        f"{end:%H:%M} UTC</text>",
    ]
    if len(series.points) == 1:
        at, value = series.points[0]
        parts.append(f'<circle class="line" cx="{x(at):.1f}" cy="{y(value):.1f}" r="3"/>')
    elif series.points:
        path = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in series.points)
        parts.append(f'<polyline class="line" points="{path}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
