"""The public performance page's figures: per provider, each measure month by month and over the
whole window, from the monthly aggregate (the national cells: every trust together), with small
numbers hidden as in every public report (`gateway.kpi.reports.Disclosure`).

One read of the aggregate per page (a few cells per provider, measure and month): the page never
reads the event log, so it stays fast however long the log grows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.domain.worklist import providers as provider_names
from gateway.kpi.definitions import DEFINITIONS, MeasureDefinition, MeasureId, Scoring
from gateway.kpi.months import month_of, months_between
from gateway.kpi.reports import Disclosure, headline
from gateway.store import kpi as store
from gateway.store.db import Database
from gateway.store.kpi import Figures

WINDOW_MONTHS = 12
# The measures of the page's one-row-per-provider table.
HEADLINE = (
    MeasureId.ON_TIME_DELIVERY,
    MeasureId.FAILED_DELIVERIES,
    MeasureId.TIME_TO_ACCEPTANCE,
    MeasureId.REJECTION_RATE,
    MeasureId.QUERY_RATE,
)
HEADLINE_DEFINITIONS = tuple(d for d in DEFINITIONS if d.id in HEADLINE)
NO_DATA = "no data"
# Their short names as column headings.
SHORT_TITLES = {
    MeasureId.ON_TIME_DELIVERY: "On-time delivery",
    MeasureId.FAILED_DELIVERIES: "Failed deliveries",
    MeasureId.TIME_TO_ACCEPTANCE: "Time to acceptance",
    MeasureId.REJECTION_RATE: "Rejections",
    MeasureId.QUERY_RATE: "Queries",
}


@dataclass(frozen=True, slots=True)
class Point:
    """One figure as published: its value for a chart (None: nothing to plot) and as words."""

    label: str  # the month (YYYY-MM) or the window
    value: float | None
    shown: str


@dataclass(frozen=True, slots=True)
class Series:
    definition: MeasureDefinition
    overall: Point
    months: tuple[Point, ...]

    @property
    def short_title(self) -> str:
        return SHORT_TITLES.get(self.definition.id, self.definition.title)

    @property
    def unit(self) -> str:
        if self.definition.scoring is Scoring.CONTINUOUS:
            return "median, minutes"
        if self.definition.scoring is Scoring.COHORT:
            return "count"
        return self.definition.score_unit


@dataclass(frozen=True, slots=True)
class ProviderPerformance:
    ods_code: str
    name: str
    series: tuple[Series, ...]

    def measure(self, measure: MeasureId) -> Series:
        return next(s for s in self.series if s.definition.id == measure)

    @property
    def headline(self) -> tuple[Series, ...]:
        return tuple(self.measure(measure) for measure in HEADLINE)


@dataclass(frozen=True, slots=True)
class Performance:
    months: tuple[str, ...]
    providers: tuple[ProviderPerformance, ...]
    threshold: int


def window(now: datetime, months: int = WINDOW_MONTHS) -> tuple[str, ...]:
    """The `months` calendar months up to and including the current one (UK time)."""
    last = month_of(now)
    first = last
    for _ in range(months - 1):
        first = _previous(first)
    return tuple(months_between(first, last))


def _previous(month: str) -> str:
    year, number = int(month[:4]), int(month[5:])
    return f"{year - 1}-12" if number == 1 else f"{year}-{number - 1:02d}"


def _minutes(value: float) -> str:
    if value >= 60 * 48:
        return f"{value / 1440:.1f} days"
    if value >= 120:
        return f"{value / 60:.1f} hours"
    return f"{value:g} min"


def point(definition: MeasureDefinition, figures: Figures, disclosure: Disclosure, label: str) -> Point:
    """The measure's main figure: a rate, a median time or a count; "<5" when too few to show."""
    numbers = headline(definition, figures, disclosure)
    if definition.scoring is Scoring.COHORT:
        count = numbers["numerator"]
        return Point(label, float(count), str(count)) if isinstance(count, int) else Point(label, None, count)
    if definition.scoring is Scoring.CONTINUOUS:
        median = numbers["median"]
        if median is None:
            return Point(label, None, NO_DATA if figures.numerator == 0 else disclosure.shown_as)
        return Point(label, float(median), _minutes(float(median)))
    score = numbers["score"]
    if score.value is None:
        small = disclosure.hidden(figures.numerator) or disclosure.hidden(figures.denominator)
        return Point(label, None, disclosure.shown_as if small else NO_DATA)
    unit = "%" if score.unit == "%" else f" per {definition.per:,}"
    return Point(label, float(score.value), f"{score.value:g}{unit}")


def performance(
    db: Database,
    *,
    now: datetime,
    threshold: int,
    provider_ods: str | None = None,
    definitions: Sequence[MeasureDefinition] = DEFINITIONS,
) -> Performance:
    """Every provider with figures (or the one asked for), each measure by month over the window."""
    months = window(now)
    disclosure = Disclosure(threshold, suppress=True)
    with db.snapshot() as tx:
        cells = store.read_cells(
            tx,
            months=months,
            tenant_ods=store.ALL_TRUSTS,
            provider_ods=provider_ods,
            measures=[d.id.value for d in definitions],
        )
    names = {provider.ods_code: provider.name for provider in provider_names(db)}
    by_cell: dict[tuple[str, str], dict[str, Figures]] = defaultdict(dict)
    for cell in cells:
        by_cell[(cell.key.provider_ods, cell.key.measure)][cell.key.month] = cell.figures
    subjects = sorted(
        {cell.key.provider_ods for cell in cells}, key=lambda code: (names.get(code, code), code)
    )
    found = []
    for ods in subjects:
        series = []
        for definition in definitions:
            monthly = by_cell.get((ods, definition.id.value), {})
            total = Figures()
            for figures in monthly.values():
                total.add(figures)
            series.append(
                Series(
                    definition,
                    point(definition, total, disclosure, f"{months[0]} to {months[-1]}"),
                    tuple(point(definition, monthly.get(m, Figures()), disclosure, m) for m in months),
                )
            )
        found.append(ProviderPerformance(ods, names.get(ods, ods), tuple(series)))
    return Performance(months, tuple(found), threshold)
