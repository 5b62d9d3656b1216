"""Raising run-out warnings on a hand-built history, both backends: the prescriptions go in through
the API, the provider reports their delivery, and the watch (gateway.kpi.watch) finds the course at
risk: the order is flagged on the worklist with its run-out date, one event is logged, one
notification queued for a subscription that asks for warnings; once, however many rounds run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from fhir_profiles.builder import PrescriptionMessageBuilder
from fhir_profiles.codes import TASK_OUTPUT_DELIVERY_WINDOW, TASK_OUTPUT_SYSTEM
from gateway.domain import prescription_record
from gateway.domain.context import Context
from gateway.kpi.months import local_date
from gateway.kpi.watch import RUN_OUT_URL, check_run_out
from gateway.notify.service import notify_run_out
from gateway.store.db import Database
from tests.test_status_api import FHIR, HOMECARE_STATUS
from tests.web.test_worklist_rules import CLINICIAN, RULES, listing, send

AsTenant = Callable[..., httpx.Client]
COURSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"
NOW = datetime.now(UTC)
DELIVERED_AT = NOW - timedelta(days=25)


def continuing(seed: int, *, supply_days: int, nhs_number: str | None = None) -> dict[str, Any]:
    """A one-item prescription of a continuing course lasting `supply_days` from its delivery."""
    message = PrescriptionMessageBuilder(seed=seed).build(items=1, nhs_number=nhs_number)
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    request["courseOfTherapyType"]["coding"][0].update(
        code="continuous", display="Continuous long term therapy"
    )
    request["dispenseRequest"]["expectedSupplyDuration"] = {
        "value": supply_days,
        "unit": "days",
        "system": "http://unitsofmeasure.org",
        "code": "d",
    }
    return message


def the_request(message: dict[str, Any]) -> dict[str, Any]:
    return next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )


def deliver(
    provider: httpx.Client,
    message: dict[str, Any],
    steps: tuple[str, ...] = ("accepted", "in-preparation", "dispensed", "delivered"),
    at: datetime = DELIVERED_AT,
    **extra: Any,
) -> None:
    request = the_request(message)
    for minute, status in enumerate(steps):
        resource = {
            "resourceType": "Task",
            "basedOn": [
                {"identifier": {k: v for k, v in request["groupIdentifier"].items() if k != "extension"}}
            ],
            "status": "in-progress",
            "businessStatus": {"coding": [{"system": HOMECARE_STATUS, "code": status}]},
            "intent": "order",
            "focus": {"identifier": request["identifier"][0]},
            "lastModified": (at - timedelta(minutes=10 - minute)).isoformat(),
            "owner": {"identifier": request["dispenseRequest"]["performer"]["identifier"]},
            **extra,
        }
        response = provider.post("/fhir/Task", content=orjson.dumps(resource), headers=FHIR)
        assert response.status_code == 200, response.text


def subscribe(trust: httpx.Client, criteria: str) -> str:
    resource = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Run-out warnings",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://ehr.rba.example.nhs.uk/homecare/notifications",
            "payload": "application/fhir+json",
        },
    }
    response = trust.post("/fhir/Subscription", content=orjson.dumps(resource), headers=FHIR)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def notifications(db: Database, subscription_id: str) -> list[dict[str, Any]]:
    with db.write() as session:
        rows = session.execute(
            text("SELECT payload FROM outbox WHERE kind = 'notification' AND subscription_id = :s"),
            {"s": subscription_id},
        ).all()
    return [orjson.loads(row[0]) for row in rows]


def run_out_events(db: Database) -> list[tuple[str, str, Any]]:
    with db.write() as session:
        rows = session.execute(
            text("SELECT prescription_id, status, detail FROM status_event WHERE status = 'run-out-risk'")
        ).all()
    return [(row[0], row[1], row[2] if isinstance(row[2], dict) else orjson.loads(row[2])) for row in rows]


@pytest.fixture
def provider(as_tenant: AsTenant) -> httpx.Client:
    return as_tenant("provider-vncel")


def test_a_course_at_risk_is_flagged_once_with_an_event_and_a_notification(
    db: Database, client: httpx.Client, provider: httpx.Client, as_tenant: AsTenant
) -> None:
    warnings_only = subscribe(as_tenant("trust-rba"), "Task?business-status=run-out-risk")
    deliveries_only = subscribe(as_tenant("trust-rba"), "Task?business-status=cancelled")
    everything = subscribe(as_tenant("trust-rba"), "Task?owner=VNCEL")
    short, long = continuing(71, supply_days=28), continuing(72, supply_days=90)
    at_risk, safe = send(client, short), send(client, long)
    deliver(provider, short)
    deliver(provider, long)

    first = check_run_out(db, now=NOW, listener=notify_run_out)
    again = check_run_out(db, now=NOW + timedelta(minutes=5), listener=notify_run_out)

    assert (first.raised, first.at_risk, again.raised, again.at_risk) == (1, 1, 0, 1)
    events = run_out_events(db)
    assert [(pid, status) for pid, status, _ in events] == [(at_risk, "run-out-risk")]
    detail = events[0][2]
    assert detail["reason"] == "no-next-order" and detail["supply_days"] == 28
    expected = local_date(DELIVERED_AT) + timedelta(days=28)
    assert detail["run_out_on"] == expected.isoformat()
    sent = notifications(db, warnings_only)
    assert len(sent) == 1 and notifications(db, deliveries_only) == []
    # A subscription with no status criterion hears the warning too, beside every status change.
    heard = [
        task
        for task in notifications(db, everything)
        if any(e["url"] == RUN_OUT_URL for e in task.get("extension", []))
    ]
    assert len(notifications(db, everything)) == 9 and len(heard) == 1
    task = sent[0]
    assert task["businessStatus"]["coding"][0]["code"] == "delivered"  # the item keeps its status
    warning = next(e for e in task["extension"] if e["url"] == RUN_OUT_URL)
    assert {"url": "runOutOn", "valueDate": expected.isoformat()} in warning["extension"]

    page = listing(db)
    actions = {row.prescription_id: row.actions for row in page.rows}
    assert actions[at_risk] == (f"At risk of running out on {expected.day} {expected:%B %Y}",)
    assert actions[safe] == ()
    record = prescription_record.prescription_record(
        Context(db), caller=CLINICIAN, prescription_id=at_risk, settings=RULES, request_id="r"
    )
    assert record.actions == actions[at_risk]
    warned = [entry for entry in record.timeline if entry.what == "Run-out warning"]
    assert [entry.why for entry in warned] == [
        f"Runs out on {expected.isoformat()}: no next supply is ordered"
    ]


def test_a_warning_stays_open_while_at_risk_and_closes_when_the_course_is_over(
    db: Database, client: httpx.Client, provider: httpx.Client
) -> None:
    message = continuing(73, supply_days=28)
    first = send(client, message)
    deliver(provider, message)
    assert check_run_out(db, now=NOW, listener=None).raised == 1
    assert listing(db).needing_action == 1
    # Much later the supply ran out long ago and the course has nothing coming: still flagged, not raised again.
    assert check_run_out(db, now=NOW + timedelta(days=20), listener=None).raised == 0
    assert [row.prescription_id for row in listing(db).rows if row.actions] == [first]
    # Nothing delivered for over the look-back: the course is not active, the warning closes.
    closed = check_run_out(db, now=NOW + timedelta(days=500), listener=None)
    assert (closed.raised, closed.cleared) == (0, 1)
    assert listing(db).needing_action == 0


def test_the_next_order_is_flagged_until_its_delivery_is_booked_in_time(
    db: Database, client: httpx.Client, provider: httpx.Client
) -> None:
    first = continuing(74, supply_days=28)
    nhs_number = next(e["resource"] for e in first["entry"] if e["resource"]["resourceType"] == "Patient")[
        "identifier"
    ][0]["value"]
    following = continuing(75, supply_days=28, nhs_number=nhs_number)
    the_request(following)["medicationCodeableConcept"] = the_request(first)["medicationCodeableConcept"]
    send(client, first)
    deliver(provider, first)
    next_order = send(client, following)
    deliver(provider, following, ("accepted",), at=NOW)

    raised = check_run_out(db, now=NOW, listener=None)
    assert (raised.raised, raised.at_risk) == (1, 1)
    # The order that will not come in time is the one flagged: accepted, no delivery date yet.
    assert [pid for pid, _, detail in run_out_events(db) if detail["reason"] == "no-delivery-date"] == [
        next_order
    ]
    assert [row.prescription_id for row in listing(db).rows if row.actions] == [next_order]

    run_out_on = local_date(DELIVERED_AT) + timedelta(days=28)
    window = {
        "start": (run_out_on - timedelta(days=2)).isoformat(),
        "end": (run_out_on - timedelta(days=1)).isoformat(),
    }
    booked = {
        "output": [
            {
                "type": {"coding": [{"system": TASK_OUTPUT_SYSTEM, "code": TASK_OUTPUT_DELIVERY_WINDOW}]},
                "valuePeriod": window,
            }
        ]
    }
    deliver(provider, following, ("in-preparation", "dispensed", "delivery-scheduled"), at=NOW, **booked)
    closed = check_run_out(db, now=NOW + timedelta(minutes=1), listener=None)
    assert (closed.raised, closed.cleared, closed.at_risk) == (0, 1, 0)
    assert listing(db).needing_action == 0


def test_a_quiet_course_is_looked_at_again_when_its_run_out_comes_near(
    db: Database, client: httpx.Client, provider: httpx.Client
) -> None:
    """Nothing happens after the delivery: the watch reads no new event, yet finds the course at risk
    on the day it was due a look (the run-out day less the lead days)."""
    message = continuing(76, supply_days=45)  # delivered 25 days ago: runs out in 20 days
    send(client, message)
    deliver(provider, message)
    assert check_run_out(db, now=NOW, listener=None).raised == 0
    # A day on, every event is settled: the watch has read the log and will only look at what is due.
    assert check_run_out(db, now=NOW + timedelta(days=1), listener=None).raised == 0
    assert check_run_out(db, now=NOW + timedelta(days=2), listener=None).at_risk == 0
    due = check_run_out(db, now=NOW + timedelta(days=14), listener=None)
    assert (due.raised, due.at_risk) == (1, 1)
    assert [row.actions for row in listing(db).rows] == [
        (f"At risk of running out on {(local_date(DELIVERED_AT) + timedelta(days=45)):%-d %B %Y}",)
    ]
