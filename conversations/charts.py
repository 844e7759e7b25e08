"""Charts drawn on the server: the geometry of a stacked bar chart, for a template to write as
inline SVG. Nothing runs in the browser, and nothing needs a ``style`` attribute (the site's
CSP allows no inline style): shapes carry coordinates and a class, the stylesheet colours them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 220
LEFT = 44
"""Room for the value axis's labels."""
BOTTOM = 22
"""Room for the column labels."""
TOP = 8
GAP = 0.2
"""The share of a column's width left empty between bars."""


@dataclass(frozen=True)
class Segment:
    series: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Column:
    label: str
    title: str
    """Said on hover and to screen readers: the column's label and every value."""
    segments: list[Segment]


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class ColumnLabel:
    x: float
    label: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    right: int
    baseline: float
    columns: list[Column]
    ticks: list[Tick]
    labels: list[ColumnLabel]


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10ⁿ (or 4, for small counts) at or above ``value``: the top
    of the value axis."""
    if value <= 4:
        return max(value, 1)
    power = 10 ** math.floor(math.log10(value))
    return int(next(step * power for step in (1, 2, 5, 10) if step * power >= value))


def stacked_bar_chart(
    columns: Sequence[tuple[str, dict[str, int]]],
    *,
    series: Sequence[str],
    label_every: int = 1,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> BarChart:
    """One bar per ``(label, values by series)``, its segments stacked in ``series`` order
    from the baseline up; every ``label_every``-th column labelled below the axis."""
    top_value = nice_ceiling(max((sum(values.values()) for _, values in columns), default=0))
    plot_width = width - LEFT - 4
    plot_height = height - TOP - BOTTOM
    baseline = TOP + plot_height
    column_width = plot_width / max(len(columns), 1)
    bar_width = column_width * (1 - GAP)
    scale = plot_height / top_value
    drawn = []
    labels = []
    for index, (label, values) in enumerate(columns):
        x = LEFT + index * column_width + (column_width - bar_width) / 2
        y = float(baseline)
        segments = []
        for name in series:
            value = values.get(name, 0)
            if not value:
                continue
            height_px = value * scale
            y -= height_px
            segments.append(Segment(name, value, round(x, 1), round(y, 1), round(bar_width, 1),
                                    round(height_px, 1)))  # fmt: skip
        shown = ", ".join(f"{name} {values[name]}" for name in series if values.get(name))
        drawn.append(Column(label, f"{label}: {shown or 'none'}", segments))
        if index % label_every == 0:
            labels.append(ColumnLabel(round(x + bar_width / 2, 1), label))
    # Round steps: 1-4 for small counts, quarters of 2·10ⁿ, fifths of 1·10ⁿ and 5·10ⁿ.
    steps = top_value if top_value <= 4 else 4 if str(top_value)[0] == "2" else 5
    ticks = [
        Tick(round(baseline - plot_height * n / steps, 1), _number(top_value * n / steps))
        for n in range(steps + 1)
    ]
    return BarChart(width, height, LEFT, width - 4, baseline, drawn, ticks, labels)


def _number(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"
