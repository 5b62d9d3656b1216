"""MeasureReports and CSV rows from figures: small-number suppression, scores, status, restatement."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir.resources.R4B.measurereport import MeasureReport

from gateway.kpi.definitions import BY_ID
from gateway.kpi.reports import Disclosure, csv_rows, measure_report
from gateway.kpi.service import PUBLIC, MeasureFigures, View
from gateway.store.kpi import Figures

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)


def figures_of(
    measure: str, figures: Figures, *, view: View = PUBLIC, months: tuple[str, ...] = ("2026-02",)
) -> MeasureFigures:
    return MeasureFigures(BY_ID[measure], "VNCEL", months, figures, None, view)


def shown(population: dict[str, object]) -> object:
    if "count" in population:
        return population["count"]
    return population["_count"]["extension"][1]["valueString"]  # type: ignore[index]


def test_counts_under_the_threshold_are_hidden_and_zero_is_not() -> None:
    disclosure = Disclosure(threshold=5, suppress=True)
    assert [disclosure.shown(n) for n in (0, 1, 4, 5, 120)] == [0, "<5", "<5", 5, 120]
    assert Disclosure(threshold=10, suppress=True).shown(9) == "<10"
    assert Disclosure(threshold=5, suppress=False).shown(1) == 1


def test_in_a_breakdown_the_next_smallest_count_is_hidden_with_a_lone_small_one() -> None:
    disclosure = Disclosure(threshold=5, suppress=True)
    assert disclosure.hidden_categories({"a": 3, "b": 10, "c": 20}) == {"a", "b"}
    assert disclosure.hidden_categories({"a": 3, "b": 2, "c": 20}) == {"a", "b"}
    assert disclosure.hidden_categories({"a": 30, "b": 10}) == set()
    assert disclosure.hidden_categories({"a": 3}) == {"a"}


def test_a_rate_from_a_hidden_count_is_withheld_and_the_breakdown_follows_the_rule() -> None:
    figures = Figures(
        numerator=33,
        denominator=1000,
        strata={"cause": {"a": 3, "b": 10, "c": 20}, "responsible-party": {"x": 33}},
    )
    report = measure_report(figures_of("failed-deliveries", figures), threshold=5, now=NOW, close_days=5)
    MeasureReport.model_validate(report)
    group = report["group"][0]
    assert [shown(p) for p in group["population"]] == [33, 1000]
    assert group["measureScore"]["value"] == 33.0
    cause = group["stratifier"][0]["stratum"]
    assert [
        (s["value"]["text"], shown(s["population"][0]), s["measureScore"].get("value")) for s in cause
    ] == [
        ("a", "<5", None),
        ("b", "hidden", None),
        ("c", 20, 20.0),
    ]
    small = measure_report(
        figures_of("failed-deliveries", Figures(2, 1000)), threshold=5, now=NOW, close_days=5
    )
    assert "value" not in small["group"][0]["measureScore"]


def test_the_same_figures_in_full_for_a_trust() -> None:
    mine = View(tenant_ods="RBA", suppress=False)
    report = measure_report(
        figures_of("on-time-delivery", Figures(2, 3), view=mine), threshold=5, now=NOW, close_days=5
    )
    assert [shown(p) for p in report["group"][0]["population"]] == [2, 3]
    assert report["group"][0]["measureScore"] == {
        "value": 66.7, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"
    }  # fmt: skip
    assert report["id"] == "on-time-delivery-VNCEL-2026-02-RBA"


def test_times_give_the_median_and_90th_percentile_unless_too_few() -> None:
    figures = Figures(numerator=10, distribution={5: 4, 30: 4, 90: 1, 600: 1})
    report = measure_report(figures_of("time-to-acceptance", figures), threshold=5, now=NOW, close_days=5)
    MeasureReport.model_validate(report)
    assert [(g["code"]["coding"][0]["code"], g["measureScore"]["value"]) for g in report["group"]] == [
        ("median", 30),
        ("p90", 90),
    ]
    few = measure_report(
        figures_of("time-to-acceptance", Figures(numerator=3, distribution={5: 3})),
        threshold=5,
        now=NOW,
        close_days=5,
    )
    assert all("value" not in g["measureScore"] for g in few["group"])


def test_a_month_is_provisional_until_it_closes() -> None:
    open_month = measure_report(
        figures_of("undeliverable-orders", Figures(7)),
        threshold=5,
        now=datetime(2026, 3, 5, 23, 59, tzinfo=UTC),
        close_days=5,
    )
    closed = measure_report(
        figures_of("undeliverable-orders", Figures(7)),
        threshold=5,
        now=datetime(2026, 3, 6, tzinfo=UTC),
        close_days=5,
    )
    assert (open_month["status"], closed["status"]) == ("pending", "complete")
    assert [shown(p) for p in closed["group"][0]["population"]] == [7]


def test_csv_rows_carry_counts_scores_breakdowns_and_extra_counts() -> None:
    on_time = figures_of(
        "on-time-delivery", Figures(90, 100, strata={"supplement": {"delivered-without-agreed-date": 3}})
    )
    restated = MeasureFigures(on_time.definition, "VNCEL", ("2026-02",), on_time.figures, NOW, PUBLIC)
    rows = csv_rows([restated], threshold=5, now=NOW, close_days=5)
    assert [(r["breakdown"], r["category"], r["numerator"], r["denominator"], r["score"]) for r in rows] == [
        ("", "", 90, 100, 90.0),
        ("supplement", "delivered-without-agreed-date", "<5", "", ""),
    ]
    assert rows[0]["restated_at"] == "2026-03-20T12:00:00Z" and rows[0]["status"] == "final"
