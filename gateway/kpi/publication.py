"""Publishing the figures: the Measure definitions, MeasureReport searches, `$evaluate-measure` for
a run of whole months, and the CSV export, each for the caller's view (public, trust or provider).

Parameters are checked here, every problem at once, so the routes only pass them on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from auth.identity import Caller
from fhir_profiles.identifiers import ODS_SYSTEM
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.kpi import service
from gateway.kpi.definitions import DEFINITIONS, MeasureDefinition, definition_for, measure_resource
from gateway.kpi.months import MonthError, first_day, last_day, month_of_date, months_between, parse_month
from gateway.kpi.reports import csv_rows, measure_report, to_csv
from gateway.store.db import Database

_ODS = re.compile(r"^[A-Z0-9]{3,12}$")
MAX_MONTHS = 36


@dataclass(frozen=True, slots=True)
class Publishing:
    """The settings that shape what is published."""

    threshold: int
    close_days: int


def _problem(parameter: str, text: str, code: IssueType = IssueType.VALUE) -> Issue:
    error = ErrorCode.MISSING_FIELD if code is IssueType.REQUIRED else ErrorCode.INVALID_VALUE
    return Issue(code, error, text, parameter)


def _only(parameters: Sequence[tuple[str, str]], allowed: set[str], issues: list[Issue]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in parameters:
        if name not in allowed:
            issues.append(
                _problem(
                    name[:40],
                    f"Unknown parameter '{name[:40]}'; use {', '.join(sorted(allowed))}",
                    IssueType.NOT_SUPPORTED,
                )
            )
        elif name in values:
            issues.append(_problem(name, f"'{name}' may be given once"))
        else:
            values[name] = value
    return values


def _subject(value: str | None, issues: list[Issue]) -> str | None:
    """A provider's ODS code: plain, `Organization/CODE` or `<ODS system>|CODE`."""
    if value is None:
        return None
    code = value.removeprefix("Organization/").removeprefix(f"{ODS_SYSTEM}|")
    if not _ODS.match(code):
        issues.append(_problem("subject", "subject is a provider's ODS code (e.g. VNCEL)"))
        return None
    return code


def _measures(value: str | None, issues: list[Issue]) -> list[MeasureDefinition]:
    if value is None:
        return list(DEFINITIONS)
    found = []
    for reference in value.split(","):
        definition = definition_for(reference.strip())
        if definition is None:
            known = ", ".join(d.id.value for d in DEFINITIONS)
            issues.append(
                _problem("measure", f"Unknown measure '{reference[:60]}'; the measures are {known}")
            )
        else:
            found.append(definition)
    return found


def _month(name: str, value: str | None, issues: list[Issue]) -> str | None:
    if value is None:
        issues.append(_problem(name, f"{name} (a month, YYYY-MM) is required", IssueType.REQUIRED))
        return None
    try:
        return parse_month(value.removeprefix("eq"))
    except MonthError:
        issues.append(_problem(name, f"{name} is a month written YYYY-MM"))
        return None


def _raise(issues: list[Issue]) -> None:
    if issues:
        raise OperationOutcomeError(400, issues)


def measures_bundle(base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(DEFINITIONS),
        "link": [{"relation": "self", "url": f"{base_url}/fhir/Measure"}],
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/Measure/{definition.id.value}",
                "resource": measure_resource(definition),
                "search": {"mode": "match"},
            }
            for definition in DEFINITIONS
        ],
    }


def read_measure(measure_id: str) -> dict[str, Any]:
    definition = definition_for(measure_id)
    if definition is None or definition.id.value != measure_id:
        raise OperationOutcomeError(
            404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, "No measure with this id")]
        )
    return measure_resource(definition)


def search_reports(
    db: Database,
    *,
    caller: Caller | None,
    parameters: Sequence[tuple[str, str]],
    now: datetime,
    publishing: Publishing,
    base_url: str,
) -> dict[str, Any]:
    """`GET /fhir/MeasureReport?measure=&subject=&period=YYYY-MM`: one summary report per measure
    and provider in the caller's view."""
    issues: list[Issue] = []
    values = _only(parameters, {"measure", "subject", "period"}, issues)
    definitions = _measures(values.get("measure"), issues)
    subject = _subject(values.get("subject"), issues)
    month = _month("period", values.get("period"), issues)
    _raise(issues)
    assert month is not None
    figures = service.read_figures(
        db, view=service.view_for(caller), months=[month], definitions=definitions, provider_ods=subject
    )
    reports = [
        measure_report(f, threshold=publishing.threshold, now=now, close_days=publishing.close_days)
        for f in figures
    ]
    query = "&".join(f"{name}={value}" for name, value in parameters)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(reports),
        "link": [{"relation": "self", "url": f"{base_url}/fhir/MeasureReport?{query}"}],
        "entry": [
            {"fullUrl": f"urn:uuid:{report['id']}", "resource": report, "search": {"mode": "match"}}
            for report in reports
        ],
    }


_PARAMETER_VALUES = ("valueDate", "valueDateTime", "valueString", "valueCode", "valueUri")


def parameters_from(resource: object) -> list[tuple[str, str]]:
    """The named values of a FHIR `Parameters` body (a POSTed `$evaluate-measure`)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise OperationOutcomeError(
            400, [_problem("Parameters", "The body is a FHIR Parameters resource", IssueType.STRUCTURE)]
        )
    values: list[tuple[str, str]] = []
    entries = resource.get("parameter", [])
    for index, entry in enumerate(entries if isinstance(entries, list) else [None]):
        entry = entry if isinstance(entry, dict) else {}
        value = next((entry[key] for key in _PARAMETER_VALUES if isinstance(entry.get(key), str)), None)
        if not isinstance(entry.get("name"), str) or value is None:
            raise OperationOutcomeError(
                400,
                [
                    _problem(
                        f"Parameters.parameter[{index}]",
                        "Each parameter has a name and a date, string or code value",
                        IssueType.STRUCTURE,
                    )
                ],
            )
        values.append((entry["name"], value))
    return values


def _period_month(name: str, value: str | None, *, end: bool, issues: list[Issue]) -> str | None:
    """A period bound as a whole month: YYYY-MM, or the first (last) day of a month as YYYY-MM-DD."""
    if value is None:
        issues.append(_problem(name, f"{name} is required (YYYY-MM or YYYY-MM-DD)", IssueType.REQUIRED))
        return None
    try:
        if len(value) == 7:
            return parse_month(value)
        day = date.fromisoformat(value)
        month = parse_month(month_of_date(day))
    except (MonthError, ValueError):
        issues.append(_problem(name, f"{name} is a date, YYYY-MM-DD (or a month, YYYY-MM)"))
        return None
    if day != (last_day(month) if end else first_day(month)):
        edge = "the last day" if end else "the first day"
        issues.append(_problem(name, f"Figures are kept by calendar month: {name} must be {edge} of a month"))
        return None
    return month


def evaluate(
    db: Database,
    *,
    caller: Caller | None,
    measure_id: str,
    parameters: Sequence[tuple[str, str]],
    now: datetime,
    publishing: Publishing,
) -> dict[str, Any]:
    """`Measure/{id}/$evaluate-measure?periodStart&periodEnd[&subject][&reportType=summary]`: one
    summary report over a run of whole months, for one provider or all of them in the caller's view."""
    measure = read_measure(measure_id)
    issues: list[Issue] = []
    values = _only(parameters, {"periodStart", "periodEnd", "subject", "reportType"}, issues)
    start = _period_month("periodStart", values.get("periodStart"), end=False, issues=issues)
    end = _period_month("periodEnd", values.get("periodEnd"), end=True, issues=issues)
    subject = _subject(values.get("subject"), issues)
    if values.get("reportType", "summary") != "summary":
        issues.append(_problem("reportType", "Only summary reports are given", IssueType.NOT_SUPPORTED))
    months = months_between(start, end) if start and end else []
    if start and end and not 1 <= len(months) <= MAX_MONTHS:
        issues.append(
            _problem("periodEnd", f"The period is 1 to {MAX_MONTHS} whole months, start before end")
        )
    _raise(issues)
    definition = definition_for(measure["id"])
    assert definition is not None
    view = service.view_for(caller)
    figures = service.read_figures(
        db, view=view, months=months, definitions=[definition], provider_ods=subject, per_provider=False
    )
    if not figures:
        # A provider asking about another provider: not in its view (the public figures are).
        raise OperationOutcomeError(
            404,
            [
                Issue(
                    IssueType.NOT_FOUND,
                    ErrorCode.NO_RECORD_FOUND,
                    "A provider's own figures only; other providers' are public (ask without a token)",
                    "subject",
                )
            ],
        )
    return measure_report(
        figures[0], threshold=publishing.threshold, now=now, close_days=publishing.close_days
    )


def export_csv(
    db: Database,
    *,
    caller: Caller | None,
    parameters: Sequence[tuple[str, str]],
    now: datetime,
    publishing: Publishing,
) -> str:
    """`GET /kpi/export.csv?month=YYYY-MM`: the month's figures per provider as CSV, in the caller's view."""
    issues: list[Issue] = []
    values = _only(parameters, {"month"}, issues)
    month = _month("month", values.get("month"), issues)
    _raise(issues)
    assert month is not None
    figures = service.read_figures(db, view=service.view_for(caller), months=[month])
    return to_csv(
        csv_rows(figures, threshold=publishing.threshold, now=now, close_days=publishing.close_days)
    )
