"""Figures as readers get them: FHIR `MeasureReport`s and CSV rows, with small numbers hidden.

In the public figures a count from 1 to one under the threshold (5 by default) is shown as "<5"
and every rate or time worked out from it is withheld; in a breakdown where one count is hidden,
the next smallest is hidden too, so that it cannot be worked out from the total. A trust's own
figures, and a provider's, are shown in full.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_profiles.identifiers import ODS_SYSTEM
from gateway.kpi.definitions import (
    IMPROVEMENT_SYSTEM,
    POPULATION_SYSTEM,
    STRATIFIER_SYSTEM,
    SUPPLEMENT,
    MeasureDefinition,
    Scoring,
)
from gateway.kpi.measures import percentile
from gateway.kpi.months import first_day, last_day, month_closes_at
from gateway.kpi.service import MeasureFigures
from gateway.store.kpi import Figures

DATA_ABSENT_URL = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
SUPPRESSED_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-KpiSuppressedCount"
RESTATED_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-KpiRestated"
SCOPE_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-KpiScope"
UCUM = "http://unitsofmeasure.org"
# Shown for a count hidden only so that a small one next to it cannot be worked out.
SECONDARY = "hidden"


def instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Disclosure:
    """Whether and below what a count is hidden."""

    threshold: int
    suppress: bool

    def hidden(self, count: int) -> bool:
        return self.suppress and 0 < count < self.threshold

    @property
    def shown_as(self) -> str:
        return f"<{self.threshold}"

    def shown(self, count: int, *, hidden: bool = False) -> int | str:
        """The count as published: itself, "<5" when small, "hidden" when hidden for another's sake."""
        if self.hidden(count):
            return self.shown_as
        return SECONDARY if hidden else count

    def hidden_categories(self, categories: Mapping[str, int]) -> set[str]:
        """The categories of a breakdown to hide: the small ones, and the next smallest when only
        one is small (else it could be worked out from the total)."""
        hidden = {name for name, count in categories.items() if self.hidden(count)}
        if len(hidden) == 1:
            others = sorted(
                (count, name) for name, count in categories.items() if name not in hidden and count
            )
            if others:
                hidden.add(others[0][1])
        return hidden


@dataclass(frozen=True, slots=True)
class Score:
    value: float | None  # None: withheld (or nothing to divide)
    unit: str


def _rate(definition: MeasureDefinition, numerator: int, denominator: int, withheld: bool) -> Score:
    if withheld or denominator <= 0:
        return Score(None, definition.score_unit)
    return Score(round(numerator * definition.per / denominator, 1), definition.score_unit)


def headline(definition: MeasureDefinition, figures: Figures, disclosure: Disclosure) -> dict[str, Any]:
    """The main numbers of one measure: counts (int, or "<5" when hidden) and its score(s)."""
    numerator, denominator = figures.numerator, figures.denominator
    hidden = disclosure.hidden(numerator) or disclosure.hidden(denominator)
    result: dict[str, Any] = {
        "numerator": disclosure.shown(numerator),
        "denominator": disclosure.shown(denominator),
    }
    if definition.scoring is Scoring.CONTINUOUS:
        withheld = disclosure.hidden(numerator)
        result["median"] = None if withheld else percentile(figures.distribution, 1, 2)
        result["p90"] = None if withheld else percentile(figures.distribution, 9, 10)
        result["denominator"] = None
    elif definition.scoring is Scoring.COHORT:
        result["denominator"] = None
    else:
        result["score"] = _rate(definition, numerator, denominator, hidden)
    return result


def _count(code: str, shown: int | str) -> dict[str, Any]:
    """A population with its count, or with the count masked and what is shown instead."""
    population: dict[str, Any] = {"code": {"coding": [{"system": POPULATION_SYSTEM, "code": code}]}}
    if isinstance(shown, int):
        population["count"] = shown
    else:
        population["_count"] = {
            "extension": [
                {"url": DATA_ABSENT_URL, "valueCode": "masked"},
                {"url": SUPPRESSED_URL, "valueString": shown},
            ]
        }
    return population


def _quantity(value: float | None, unit: str) -> dict[str, Any]:
    if value is None:
        return {"extension": [{"url": DATA_ABSENT_URL, "valueCode": "masked"}]}
    quantity: dict[str, Any] = {"value": value, "unit": unit}
    if unit in ("min", "%"):
        quantity.update(system=UCUM, code=unit)
    return quantity


def _groups(definition: MeasureDefinition, figures: Figures, disclosure: Disclosure) -> list[dict[str, Any]]:
    numbers = headline(definition, figures, disclosure)
    code = {"coding": [{"system": STRATIFIER_SYSTEM, "code": definition.id.value}], "text": definition.title}
    if definition.scoring is Scoring.CONTINUOUS:
        groups = [
            {
                "code": {"coding": [{"system": STRATIFIER_SYSTEM, "code": statistic}], "text": text},
                "population": [_count("measure-population", disclosure.shown(figures.numerator))],
                "measureScore": _quantity(numbers[statistic], "min"),
            }
            for statistic, text in (("median", "Median"), ("p90", "90th percentile"))
        ]
    elif definition.scoring is Scoring.COHORT:
        groups = [
            {"code": code, "population": [_count("initial-population", disclosure.shown(figures.numerator))]}
        ]
    else:
        group: dict[str, Any] = {
            "code": code,
            "population": [
                _count("numerator", disclosure.shown(figures.numerator)),
                _count("denominator", disclosure.shown(figures.denominator)),
            ],
            "measureScore": _quantity(numbers["score"].value, definition.score_unit),
        }
        stratifiers = [
            _stratifier(definition, name, figures, disclosure) for name, _ in definition.stratifiers
        ]
        if stratifiers:
            group["stratifier"] = stratifiers
        groups = [group]
    for name, _ in definition.supplements:
        count = figures.strata.get(SUPPLEMENT, {}).get(name, 0)
        groups.append(
            {
                "code": {"coding": [{"system": STRATIFIER_SYSTEM, "code": name}]},
                "population": [_count("initial-population", disclosure.shown(count))],
            }
        )
    return groups


def _stratifier(
    definition: MeasureDefinition, name: str, figures: Figures, disclosure: Disclosure
) -> dict[str, Any]:
    categories = figures.strata.get(name, {})
    hidden = disclosure.hidden_categories(categories)
    denominator_hidden = disclosure.hidden(figures.denominator)
    strata = []
    for category, count in sorted(categories.items()):
        population = _count("numerator", disclosure.shown(count, hidden=category in hidden))
        score = _rate(definition, count, figures.denominator, category in hidden or denominator_hidden)
        strata.append(
            {
                "value": {"coding": [{"system": STRATIFIER_SYSTEM, "code": category}], "text": category},
                "population": [population],
                "measureScore": _quantity(score.value, score.unit),
            }
        )
    return {"code": [{"coding": [{"system": STRATIFIER_SYSTEM, "code": name}]}], "stratum": strata}


def period_label(months: tuple[str, ...]) -> str:
    return months[0] if len(months) == 1 else f"{months[0]}.{months[-1]}"


def report_status(months: tuple[str, ...], *, now: datetime, close_days: int) -> str:
    """`complete` once the last month has closed; `pending` (provisional) before."""
    return "complete" if now >= month_closes_at(months[-1], close_days) else "pending"


def measure_report(
    measured: MeasureFigures, *, threshold: int, now: datetime, close_days: int
) -> dict[str, Any]:
    """A summary `MeasureReport` of one measure for one provider (or all) over whole months."""
    definition, view = measured.definition, measured.view
    disclosure = Disclosure(threshold, view.suppress)
    subject = measured.provider_ods or "all"
    scope = view.tenant_ods or "national"
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "id": f"{definition.id.value}-{subject}-{period_label(measured.months)}-{scope}",
        "status": report_status(measured.months, now=now, close_days=close_days),
        "type": "summary",
        "measure": definition.url,
        "date": instant(now),
        "period": {
            "start": first_day(measured.months[0]).isoformat(),
            "end": last_day(measured.months[-1]).isoformat(),
        },
        "improvementNotation": {"coding": [{"system": IMPROVEMENT_SYSTEM, "code": definition.improvement}]},
        "group": _groups(definition, measured.figures, disclosure),
        "extension": [{"url": SCOPE_URL, "valueString": view.scope}],
    }
    if measured.provider_ods is not None:
        report["subject"] = {"identifier": {"system": ODS_SYSTEM, "value": measured.provider_ods}}
    if view.tenant_ods is not None:
        report["extension"][0]["valueString"] = f"trust {view.tenant_ods}"
    if measured.restated_at is not None:
        report["extension"].append(
            {
                "url": RESTATED_URL,
                "extension": [
                    {"url": "restatedAt", "valueDateTime": instant(measured.restated_at)},
                    {
                        "url": "note",
                        "valueString": "Restated: events that happened in this period were recorded after "
                        f"it closed, the latest at {instant(measured.restated_at)}; the figures include them.",
                    },
                ],
            }
        )
    return report


CSV_COLUMNS = (
    "period",
    "measure",
    "provider",
    "trust",
    "breakdown",
    "category",
    "numerator",
    "denominator",
    "score",
    "score_unit",
    "median_minutes",
    "p90_minutes",
    "status",
    "restated_at",
)


def csv_rows(
    figures: Iterable[MeasureFigures], *, threshold: int, now: datetime, close_days: int
) -> list[dict[str, Any]]:
    """One row per measure and provider, then one per category of each breakdown and extra count."""
    rows: list[dict[str, Any]] = []
    for measured in figures:
        definition = measured.definition
        disclosure = Disclosure(threshold, measured.view.suppress)
        numbers = headline(definition, measured.figures, disclosure)
        base = {
            "period": period_label(measured.months),
            "measure": definition.id.value,
            "provider": measured.provider_ods or "",
            "trust": measured.view.tenant_ods or "",
            "status": "final"
            if report_status(measured.months, now=now, close_days=close_days) == "complete"
            else "provisional",
            "restated_at": instant(measured.restated_at) if measured.restated_at else "",
        }
        score: Any = numbers.get("score")
        rows.append(
            base
            | {
                "breakdown": "",
                "category": "",
                "numerator": numbers["numerator"],
                "denominator": "" if numbers["denominator"] is None else numbers["denominator"],
                "score": "" if score is None or score.value is None else score.value,
                "score_unit": score.unit if score is not None else "",
                "median_minutes": _blank(numbers.get("median")),
                "p90_minutes": _blank(numbers.get("p90")),
            }
        )
        rows.extend(_breakdown_rows(definition, measured.figures, disclosure, base))
    return rows


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _breakdown_rows(
    definition: MeasureDefinition, figures: Figures, disclosure: Disclosure, base: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for name, _ in definition.stratifiers:
        categories = figures.strata.get(name, {})
        hidden = disclosure.hidden_categories(categories)
        for category, count in sorted(categories.items()):
            withheld = category in hidden or disclosure.hidden(figures.denominator)
            score = _rate(definition, count, figures.denominator, withheld)
            rows.append(
                base
                | {
                    "breakdown": name,
                    "category": category,
                    "numerator": disclosure.shown(count, hidden=category in hidden),
                    "denominator": disclosure.shown(figures.denominator),
                    "score": "" if score.value is None else score.value,
                    "score_unit": score.unit,
                    "median_minutes": "",
                    "p90_minutes": "",
                }
            )
    for name, _ in definition.supplements:
        count = figures.strata.get(SUPPLEMENT, {}).get(name, 0)
        rows.append(
            base
            | {
                "breakdown": SUPPLEMENT,
                "category": name,
                "numerator": disclosure.shown(count),
                "denominator": "",
                "score": "",
                "score_unit": "",
                "median_minutes": "",
                "p90_minutes": "",
            }
        )
    return rows


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
