"""Charts as inline SVG, drawn on the server: no script, no library, nothing fetched. Here the
geometry is worked out; `templates/_charts.html` writes it (autoescaped). Each chart is an image
with a name (`role="img"`, `aria-label`, `<title>`) that says what it shows in words, and the page
gives the same figures as text or a table beside it."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.kpi.definitions import Scoring
from gateway.kpi.performance import Point, Series

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def month_words(month: str) -> str:
    """`2026-03` as `Mar 2026`."""
    return f"{_MONTHS[int(month[5:]) - 1]} {month[:4]}"


def described(series: Series) -> str:
    points = "; ".join(f"{month_words(p.label)}: {p.shown}" for p in series.months)
    return f"{series.definition.title} by month ({series.unit}). {points}"


def _top(series: Series) -> float:
    if series.definition.scoring is Scoring.PROPORTION:
        return 100.0
    values = [p.value for p in series.months if p.value is not None]
    return max(values, default=1.0) or 1.0


@dataclass(frozen=True, slots=True)
class Sparkline:
    width: int
    height: int
    label: str
    lines: tuple[str, ...]  # polyline points, one per unbroken run of months
    dots: tuple[tuple[float, float], ...]  # a month alone between gaps


def sparkline(series: Series, width: int = 120, height: int = 32) -> Sparkline:
    """A small line of the monthly figures, broken where nothing can be shown."""
    top = _top(series)
    step = (width - 8) / max(1, len(series.months) - 1)
    runs: list[list[tuple[float, float]]] = [[]]
    for index, point in enumerate(series.months):
        if point.value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((4 + index * step, height - 4 - (point.value / top) * (height - 8)))
    lines = tuple(" ".join(f"{x:.1f},{y:.1f}" for x, y in run) for run in runs if len(run) > 1)
    dots = tuple(run[0] for run in runs if len(run) == 1)
    return Sparkline(width, height, described(series), lines, dots)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    middle: float
    month: str
    name: str  # "Mar 2026: 90%"
    value_y: float
    value: str  # above the bar ("<5" where hidden)


@dataclass(frozen=True, slots=True)
class BarChart:
    width: int
    height: int
    label: str
    left: int
    right: int
    above: int
    baseline: int
    top: str
    bars: tuple[Bar, ...]


def bar_chart(series: Series, width: int = 640, height: int = 240) -> BarChart:
    """Monthly bars, the month under each and the figure above it."""
    left, right, bottom, above = 48, 8, 28, 20
    baseline = height - bottom
    plot = baseline - above
    top = _top(series)
    slot = (width - left - right) / max(1, len(series.months))
    bars = []
    for index, point in enumerate(series.months):
        x = left + index * slot
        size = 0.0 if point.value is None else max((point.value / top) * plot, 0.5)
        y = baseline - size
        bars.append(
            Bar(
                x=round(x + slot * 0.15, 1),
                y=round(y, 1),
                width=round(slot * 0.7, 1),
                height=round(size, 1),
                middle=round(x + slot / 2, 1),
                month=_MONTHS[int(point.label[5:]) - 1],
                name=f"{month_words(point.label)}: {point.shown}",
                value_y=round(y - 4, 1),
                value=_short(point),
            )
        )
    return BarChart(
        width, height, described(series), left, width - right, above, baseline, f"{top:g}", tuple(bars)
    )


def _short(point: Point) -> str:
    if point.value is None:
        return "" if point.shown == "no data" else point.shown
    return f"{point.value:g}"
