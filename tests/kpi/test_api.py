"""The KPI API over real HTTP on SQLite and PostgreSQL: Measures, MeasureReports, $evaluate-measure
and the CSV export, for the public (small numbers hidden), a trust and a provider."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.measure import Measure
from fhir.resources.R4B.measurereport import MeasureReport

from fhir_profiles.codes import RESPONSIBLE_PARTY_SYSTEM, RESPONSIBLE_PARTY_URL
from gateway.app import create_app
from gateway.kpi import service
from gateway.settings import Settings
from gateway.store.db import Database
from tests.kpi.history import History, at, window
from tests.kpi.storage import put_events, put_prescriptions
from tests.support import RunningServer
from tests.test_status_api import order, report, task

LATER = datetime(2027, 1, 1, tzinfo=UTC)
FHIR = {"Content-Type": "application/fhir+json"}


def deliveries(
    prefix: str, provider: str, trust: str, *, on_time: int, late: int = 0, failed: int = 0
) -> list[History]:
    """Prescriptions of one item each, delivered in February 2026 (due on the 10th)."""
    histories = []
    for number in range(on_time + late + failed):
        history = History(f"{prefix}{number}", provider=provider, trust=trust).order(at("2026-02-01 09:00"))
        history.report("i", "accepted", at("2026-02-01 10:00") + timedelta(minutes=10 * number))
        history.report("i", "dispensed", at("2026-02-02 10:00"))
        history.report("i", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-10"))
        if number >= on_time + late:
            history.report(
                "i", "delivery-failed", at("2026-02-10 12:00"),
                reason={"code": "patient-not-home", "text": None}, responsible_party="patient",
            )  # fmt: skip
            history.report("i", "delivery-scheduled", at("2026-02-11 09:00"), **window("2026-02-12"))
        delivered = at("2026-02-10 15:00") if number < on_time else at("2026-02-12 15:00")
        history.report("i", "delivered", delivered)
        histories.append(history)
    return histories


@pytest.fixture
def published(db: Database) -> Database:
    """February 2026: VNCEL 5 of 6 on time for RBA and 2 of 2 for RBB (one reported late, in March);
    VNFKT 6 deliveries for RBA, one after a failed attempt (the patient was out)."""
    histories = [
        *deliveries("a", "VNCEL", "RBA", on_time=5, late=1),
        *deliveries("b", "VNCEL", "RBB", on_time=2),
        *deliveries("c", "VNFKT", "RBA", on_time=5, failed=1),
    ]
    last = histories[7].events.pop()  # RBB's second delivery, reported after February closed
    late = History(last.prescription_id, "VNCEL", "RBB", events=[]).report(
        "i", "delivered", last.occurred_at, recorded=at("2026-03-20 08:00")
    )
    put_prescriptions(db, histories)
    put_events(db, [e for h in histories for e in h.events])
    put_events(db, late.events)
    service.fold_new_events(db, now=LATER, close_days=5)
    return db


@pytest.fixture
def public(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        yield http


def reports_of(response: httpx.Response) -> dict[tuple[str, str], dict[str, Any]]:
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    found = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        MeasureReport.model_validate(resource)
        subject = resource.get("subject", {}).get("identifier", {}).get("value", "all")
        found[(resource["measure"].rsplit("/", 1)[1], subject)] = resource
    return found


def populations(report: dict[str, Any], group: int = 0) -> dict[str, Any]:
    """Each population's count, or what is shown in its place when it is hidden."""
    return {
        p["code"]["coding"][0]["code"]: p["count"]
        if "count" in p
        else p["_count"]["extension"][1]["valueString"]
        for p in report["group"][group]["population"]
    }


def score(report: dict[str, Any], group: int = 0) -> float | None:
    return report["group"][group]["measureScore"].get("value")


def test_the_measures_are_published_as_fhir_measures_with_their_rule(
    public: httpx.Client, db: Database
) -> None:
    bundle = public.get("/fhir/Measure")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("application/fhir+json")
    measures = [entry["resource"] for entry in bundle.json()["entry"]]
    assert {m["id"] for m in measures} == {
        "on-time-delivery", "failed-deliveries", "time-to-acceptance", "rejection-rate", "query-rate",
        "query-time-to-answer", "cancellation-success", "undeliverable-orders", "expired-unfilled",
    }  # fmt: skip
    for measure in measures:
        Measure.model_validate(measure)
        assert measure["url"] == f"https://homecare-gateway.nhs.uk/Measure/{measure['id']}"
        assert measure["status"] == "active" and len(measure["description"]) > 200
    one = public.get("/fhir/Measure/on-time-delivery").json()
    assert "rescheduled in time" in one["description"]
    assert one["scoring"]["coding"][0]["code"] == "proportion"
    assert public.get("/fhir/Measure/nothing").status_code == 404


def test_the_public_sees_every_trust_together_with_small_numbers_hidden(
    public: httpx.Client, published: Database
) -> None:
    found = reports_of(public.get("/fhir/MeasureReport", params={"period": "2026-02"}))
    assert {subject for _, subject in found} == {"VNCEL", "VNFKT"}
    on_time = found[("on-time-delivery", "VNCEL")]
    assert populations(on_time) == {"numerator": 7, "denominator": 8}
    assert score(on_time) == 87.5
    assert on_time["status"] == "complete" and on_time["period"] == {
        "start": "2026-02-01",
        "end": "2026-02-28",
    }
    failed = found[("failed-deliveries", "VNFKT")]
    assert populations(failed) == {"numerator": "<5", "denominator": 7}
    assert failed["group"][0]["measureScore"] == {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}
        ]
    }
    (cause,) = [s for s in failed["group"][0]["stratifier"] if s["code"][0]["coding"][0]["code"] == "cause"]
    assert [s["population"][0]["_count"]["extension"][1]["valueString"] for s in cause["stratum"]] == ["<5"]
    # February has closed; RBB's late delivery restated it.
    restated = {e["url"].rsplit("-", 1)[1]: e for e in on_time["extension"]}
    assert restated["KpiRestated"]["extension"][0] == {
        "url": "restatedAt",
        "valueDateTime": "2026-03-20T08:00:00Z",
    }
    assert "restated" not in str(found[("failed-deliveries", "VNFKT")]["extension"]).lower()


def test_a_trust_sees_its_own_prescriptions_per_provider_in_full(
    as_tenant: Callable[..., httpx.Client], published: Database
) -> None:
    rba = reports_of(as_tenant("trust-rba").get("/fhir/MeasureReport?period=2026-02"))
    assert populations(rba[("on-time-delivery", "VNCEL")]) == {"numerator": 5, "denominator": 6}
    failed = rba[("failed-deliveries", "VNFKT")]
    assert populations(failed) == {"numerator": 1, "denominator": 7}
    assert score(failed) == 142.9  # per 1,000 attempts
    assert failed["extension"][0]["valueString"] == "trust RBA"
    rbb = reports_of(as_tenant("trust-rbb").get("/fhir/MeasureReport", params={"period": "2026-02"}))
    assert {subject for _, subject in rbb} == {"VNCEL"}
    assert populations(rbb[("on-time-delivery", "VNCEL")]) == {"numerator": 2, "denominator": 2}


def test_a_provider_sees_its_own_figures_in_full_and_not_another_providers(
    as_tenant: Callable[..., httpx.Client], published: Database
) -> None:
    provider = as_tenant("provider-vnfkt")
    own = reports_of(provider.get("/fhir/MeasureReport?period=2026-02&measure=failed-deliveries"))
    assert list(own) == [("failed-deliveries", "VNFKT")]
    assert populations(own[("failed-deliveries", "VNFKT")]) == {"numerator": 1, "denominator": 7}
    assert reports_of(provider.get("/fhir/MeasureReport?period=2026-02&subject=VNCEL")) == {}
    evaluated = provider.get(
        "/fhir/Measure/on-time-delivery/$evaluate-measure?periodStart=2026-02&periodEnd=2026-02&subject=VNCEL"
    )
    assert evaluated.status_code == 404


def test_evaluate_measure_over_whole_months_by_get_and_by_post(
    public: httpx.Client, published: Database
) -> None:
    path = "/fhir/Measure/on-time-delivery/$evaluate-measure"
    by_get = public.get(
        path, params={"periodStart": "2026-01-01", "periodEnd": "2026-03-31", "subject": "VNCEL"}
    )
    assert by_get.status_code == 200, by_get.text
    MeasureReport.model_validate(by_get.json())
    assert populations(by_get.json()) == {"numerator": 7, "denominator": 8}
    assert by_get.json()["period"] == {"start": "2026-01-01", "end": "2026-03-31"}
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "periodStart", "valueDate": "2026-02-01"},
            {"name": "periodEnd", "valueDate": "2026-02-28"},
        ],
    }
    by_post = public.post(path, content=orjson.dumps(parameters), headers=FHIR)
    assert by_post.status_code == 200, by_post.text
    everyone = by_post.json()
    assert "subject" not in everyone and populations(everyone) == {"numerator": 12, "denominator": 14}
    query_only = public.post(path + "?periodStart=2026-02&periodEnd=2026-02&subject=VNFKT")
    assert populations(query_only.json()) == {"numerator": 5, "denominator": 6}


def test_figures_for_a_period_that_is_not_whole_months_are_refused(
    public: httpx.Client, db: Database
) -> None:
    answer = public.get(
        "/fhir/Measure/on-time-delivery/$evaluate-measure",
        params={"periodStart": "2026-02-03", "periodEnd": "2026-02-28"},
    )
    assert answer.status_code == 400
    (issue,) = answer.json()["issue"]
    assert issue["expression"] == ["periodStart"] and "first day of a month" in issue["diagnostics"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("", "period"),
        ("period=2026-2", "period"),
        ("period=2026-02&measure=speed", "measure"),
        ("period=2026-02&subject=not%20ods", "subject"),
        ("period=2026-02&owner=VNCEL", "owner"),
    ],
)
def test_bad_report_searches_are_refused_naming_the_parameter(
    public: httpx.Client, db: Database, query: str, parameter: str
) -> None:
    answer = public.get(f"/fhir/MeasureReport?{query}")
    assert answer.status_code == 400
    assert [issue["expression"] for issue in answer.json()["issue"]] == [[parameter]]


def test_a_bad_token_is_refused_rather_than_treated_as_the_public(
    public: httpx.Client, as_tenant: Callable[..., httpx.Client], db: Database
) -> None:
    answer = public.get("/fhir/MeasureReport?period=2026-02", headers={"Authorization": "Bearer nonsense"})
    assert answer.status_code == 401
    without_scope = as_tenant("trust-rba", "system/MedicationRequest.c")
    assert without_scope.get("/fhir/MeasureReport?period=2026-02").status_code == 403


def test_the_csv_export_gives_the_same_figures(
    public: httpx.Client, as_tenant: Callable[..., httpx.Client], published: Database
) -> None:
    answer = public.get("/kpi/export.csv?month=2026-02")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    on_time = next(
        r
        for r in rows
        if r["measure"] == "on-time-delivery" and r["provider"] == "VNCEL" and not r["breakdown"]
    )
    assert (on_time["numerator"], on_time["denominator"], on_time["score"]) == ("7", "8", "87.5")
    assert (
        on_time["trust"] == ""
        and on_time["status"] == "final"
        and on_time["restated_at"] == "2026-03-20T08:00:00Z"
    )
    failed = next(
        r
        for r in rows
        if r["measure"] == "failed-deliveries" and r["provider"] == "VNFKT" and not r["breakdown"]
    )
    assert (failed["numerator"], failed["score"]) == ("<5", "")
    cause = next(r for r in rows if r["breakdown"] == "cause" and r["provider"] == "VNFKT")
    assert (cause["category"], cause["numerator"]) == ("patient-not-home", "<5")
    own = list(csv.DictReader(io.StringIO(as_tenant("trust-rba").get("/kpi/export.csv?month=2026-02").text)))
    failed = next(
        r
        for r in own
        if r["measure"] == "failed-deliveries" and r["provider"] == "VNFKT" and not r["breakdown"]
    )
    assert (failed["trust"], failed["numerator"], failed["score"]) == ("RBA", "1", "142.9")
    assert public.get("/kpi/export.csv").status_code == 400


def test_figures_follow_real_orders_and_status_reports(
    client: httpx.Client, as_tenant: Callable[..., httpx.Client], public: httpx.Client, db: Database
) -> None:
    provider = as_tenant("provider-vncel")
    message, _ = order(client, items=1, seed=21)
    now = datetime.now(UTC).replace(microsecond=0)
    day = now.date().isoformat()

    def step(status: str, minutes: int, **extra: Any) -> None:
        resource = task(message, 0, status, 0, **extra)
        resource["lastModified"] = (now + timedelta(minutes=minutes)).isoformat()
        assert report(provider, resource).status_code == 200

    step("accepted", 42)
    step("dispensed", 50)
    window_output = {
        "type": {
            "coding": [
                {
                    "system": "https://homecare-gateway.nhs.uk/CodeSystem/task-output",
                    "code": "delivery-window",
                }
            ]
        },
        "valuePeriod": {"start": day, "end": day},
    }
    step("delivery-scheduled", 55, output=[window_output])
    party = {"system": RESPONSIBLE_PARTY_SYSTEM, "code": "patient"}
    step(
        "delivery-failed",
        60,
        statusReason={"coding": [{"code": "patient-not-in"}]},
        extension=[{"url": RESPONSIBLE_PARTY_URL, "valueCoding": party}],
    )
    step("out-for-delivery", 61)
    step("delivered", 62)
    service.fold_new_events(db, now=datetime.now(UTC), close_days=5)
    month = f"{now.astimezone(service_zone()).year:04d}-{now.astimezone(service_zone()).month:02d}"
    found = reports_of(client.get(f"/fhir/MeasureReport?period={month}&subject=VNCEL"))
    failed = found[("failed-deliveries", "VNCEL")]
    assert populations(failed) == {"numerator": 1, "denominator": 2}
    strata = {
        s["code"][0]["coding"][0]["code"]: s["stratum"][0]["value"]["text"]
        for s in failed["group"][0]["stratifier"]
    }
    assert strata == {"cause": "patient-not-in", "responsible-party": "patient"}
    accepted = found[("time-to-acceptance", "VNCEL")]
    assert populations(accepted) == {"measure-population": 1}
    assert 41 <= score(accepted) <= 42
    assert populations(found[("query-rate", "VNCEL")]) == {"numerator": 0, "denominator": 0}
    assert found[("on-time-delivery", "VNCEL")]["status"] == "pending"  # the month is still open


def service_zone() -> Any:
    from gateway.kpi.months import REPORTING_ZONE

    return REPORTING_ZONE


def test_the_serving_gateway_folds_new_events_by_itself(
    database: Database, settings: Settings, db: Database
) -> None:
    histories = deliveries("d", "VNCEL", "RBA", on_time=1)
    put_prescriptions(db, histories)
    put_events(db, histories[0].events)
    folding = settings.model_copy(update={"kpi_fold_seconds": 0.1})
    with (
        RunningServer(create_app(folding, db=database)) as running,
        httpx.Client(base_url=running.base_url) as http,
    ):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = reports_of(http.get("/fhir/MeasureReport?period=2026-02&measure=on-time-delivery"))
            if found:
                break
            time.sleep(0.1)
    assert populations(found[("on-time-delivery", "VNCEL")]) == {"numerator": "<5", "denominator": "<5"}
