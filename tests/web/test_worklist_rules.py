"""The worklist's action-needed rules, filters and paging, read through the domain service on both
backends; the prescriptions get where they are through the API and the dispatcher's own steps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from gateway.domain import cancellation, worklist
from gateway.domain.context import Context
from gateway.domain.delivery import DeliveryOutcome, Recorded, record_provider_outcome
from gateway.domain.people import CLINICIAN_SCOPES
from gateway.store import outbox
from gateway.store.db import Database
from gateway.store.outbox import ClaimedMessage
from tests.test_status_api import FHIR, report, task

AsTenant = Callable[..., httpx.Client]
RULES = worklist.ActionSettings(
    acceptance=timedelta(hours=24), expiring=timedelta(days=7), recent=timedelta(days=7)
)
CLINICIAN = Caller("web-pages", Role.CLINICIAN, "RBA", scopes=CLINICIAN_SCOPES, user_id="alice")


def listing(db: Database, *, later: timedelta = timedelta(0), **query: Any) -> worklist.WorklistPage:
    now = datetime.now(UTC) + later
    return worklist.worklist(
        Context(db, clock=lambda: now),
        caller=CLINICIAN,
        query=worklist.WorklistQuery(**query),
        settings=RULES,
        page_size=50,
        request_id="r",
    )


def actions_by_medicine(page: worklist.WorklistPage) -> dict[str, tuple[str, ...]]:
    return {row.prescription_id: row.actions for row in page.rows}


@pytest.fixture
def provider(as_tenant: AsTenant) -> httpx.Client:
    return as_tenant("provider-vncel")


def send(client: httpx.Client, message: dict[str, Any]) -> str:
    response = client.post("/fhir/$process-message", content=orjson.dumps(message), headers=FHIR)
    assert response.status_code == 200, response.text
    return str(response.headers["location"]).rpartition("/")[2]


def test_each_rule_flags_what_needs_action_and_nothing_else(
    db: Database, client: httpx.Client, provider: httpx.Client
) -> None:
    builder = PrescriptionMessageBuilder(seed=60)
    made = {
        name: builder.build(items=1)
        for name in ("query", "rejected", "failed", "quiet", "refused", "waiting")
    }
    ending = builder.build(items=1)
    request = next(
        e["resource"] for e in ending["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    request["dispenseRequest"]["validityPeriod"] = {"end": (date.today() + timedelta(days=3)).isoformat()}
    made["expiring"] = ending
    found = {name: send(client, message) for name, message in made.items()}
    steps = {
        "query": ["accepted", "query"],
        "rejected": ["rejected"],
        "failed": [
            "accepted",
            "in-preparation",
            "dispensed",
            "delivery-scheduled",
            "out-for-delivery",
            "delivery-failed",
        ],
        "quiet": ["accepted", "in-preparation"],
        "refused": ["accepted"],
        "expiring": ["accepted"],
    }
    for name, path in steps.items():
        for minute, status in enumerate(path, start=1):
            assert report(provider, task(made[name], 0, status, minute)).status_code == 200, (name, status)
    cancel = build_cancellation(made["refused"])
    assert (
        client.post("/fhir/$process-message", content=orjson.dumps(cancel), headers=FHIR).status_code == 202
    )
    with db.transaction() as tx:
        cancellation.provider_answered_cancel(
            tx,
            prescription_id=found["refused"],
            provider_ods="VNCEL",
            agreed=False,
            reason="Already with the courier",
            now=datetime.now(UTC),
            listener=None,
        )
    page = listing(db)
    flagged = {name: actions_by_medicine(page)[found[name]] for name in found}
    assert flagged == {
        "query": ("Provider query awaiting your answer",),
        "rejected": ("Rejected by the provider",),
        "failed": ("Delivery failed",),
        "quiet": (),
        "refused": ("The provider refused the cancellation",),
        "waiting": (),
        "expiring": ("Expiring soon with nothing dispensed",),
    }
    assert page.needing_action == 5 and page.total == 7
    assert [row.actions != () for row in page.rows] == [True] * 5 + [False] * 2
    # A day later: the order nobody accepted needs action too; a week on, old rejections drop off.
    assert (
        "Not yet accepted by the provider"
        in actions_by_medicine(listing(db, later=timedelta(hours=25)))[found["waiting"]]
    )
    later = actions_by_medicine(listing(db, later=timedelta(days=8)))
    assert later[found["rejected"]] == () and later[found["refused"]] == ()


def test_an_order_the_gateway_cannot_deliver_needs_action(db: Database, client: httpx.Client) -> None:
    prescription = send(client, PrescriptionMessageBuilder(seed=61).build(items=1))
    now = datetime.now(UTC)
    (claimed,) = outbox.claim_due(db, owner="test", now=now, lease=timedelta(seconds=30), limit=10)
    assert isinstance(claimed, ClaimedMessage)
    with db.transaction() as tx:
        recorded = record_provider_outcome(
            tx,
            claimed,
            DeliveryOutcome.failed("connection refused"),
            owner="test",
            now=now,
            retry_at=None,
            listener=None,
        )
    assert recorded is Recorded.DEAD
    (row,) = listing(db).rows
    assert row.prescription_id == prescription and row.status_words == "Cannot reach provider"
    assert row.actions == ("The gateway cannot reach the provider",)


def test_filters_and_pages(db: Database, client: httpx.Client, provider: httpx.Client) -> None:
    builder = PrescriptionMessageBuilder(seed=62)
    to_vncel = [send(client, builder.build(items=1)) for _ in range(4)]
    to_vnfkt = [send(client, builder.build(items=1, performer_ods="VNFKT")) for _ in range(3)]
    assert {row.prescription_id for row in listing(db, provider_ods="VNFKT").rows} == set(to_vnfkt)
    assert listing(db, status="queued").total == 7 and listing(db, status="accepted").total == 0
    today = datetime.now(UTC).date()
    assert listing(db, active_from=today).total == 7
    assert listing(db, active_to=today - timedelta(days=1)).total == 0
    pages = [
        worklist.worklist(
            Context(db),
            caller=CLINICIAN,
            query=worklist.WorklistQuery(page=number),
            settings=RULES,
            page_size=3,
            request_id="r",
        )
        for number in (1, 2, 3)
    ]
    assert [len(page.rows) for page in pages] == [3, 3, 1] and pages[0].pages == 3
    shown = [row.prescription_id for page in pages for row in page.rows]
    assert shown == list(reversed(to_vncel + to_vnfkt)), "newest activity first, across pages"
    other = Caller("web-pages", Role.CLINICIAN, "RBB", scopes=CLINICIAN_SCOPES, user_id="bob")
    assert (
        worklist.worklist(
            Context(db),
            caller=other,
            query=worklist.WorklistQuery(),
            settings=RULES,
            page_size=3,
            request_id="r",
        ).total
        == 0
    )


def test_search_matches_an_nhs_number_or_a_prescription_id_exactly(
    db: Database, client: httpx.Client
) -> None:
    builder = PrescriptionMessageBuilder(seed=63)
    mine = builder.build(items=1, nhs_number="9434765919")
    short_form = next(
        e["resource"] for e in mine["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )["groupIdentifier"]["value"]
    target = send(client, mine)
    send(client, builder.build(items=1))
    assert [row.prescription_id for row in listing(db, search="943 476 5919").rows] == [target]
    assert [row.prescription_id for row in listing(db, search=short_form.lower()).rows] == [target]
    assert listing(db, search="943476591").search_problem is not None
