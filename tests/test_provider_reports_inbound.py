"""The report sink the adapters' listeners and pollers hand providers' messages to, on both databases:
stored and applied in one transaction, once per key, all or nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from adapters.inbound import AckOutcome, DispenseDetail, InboundMessage, ProviderReport, ReportKind
from fhir_profiles.builder import Message
from gateway.domain.context import Context
from gateway.domain.provider_reports_inbound import receive_provider_message
from gateway.store.db import Database
from tests.e2e_support import dispenses_of, item_identifiers_of, scalar, short_form_of
from tests.test_lifecycle_e2e import send_order, statuses

WHEN = datetime(2026, 11, 23, 9, tzinfo=UTC)


@pytest.fixture
def context(db: Database) -> Iterator[Context]:
    ctx = Context.for_database(db)
    yield ctx
    ctx.close()


def report(
    message: Message, status: str | None, minute: int, *, item: int = 0, **extra: object
) -> ProviderReport:
    return ProviderReport(
        short_form_id=short_form_of(message),
        item_identifier=item_identifiers_of(message)[item],
        status=status,
        occurred_at=WHEN + timedelta(minutes=minute),
        **extra,  # type: ignore[arg-type]
    )


def inbound(*reports: ProviderReport, key: str | None = None, ods: str = "VNCEL") -> InboundMessage:
    return InboundMessage(
        scheme="csv-drop",
        provider_ods=ods,
        dedupe_key=key or f"csv-drop/{ods}/{uuid.uuid4()}",
        reports=reports,
        raw=b"format_version,...",
        peer="status.csv",
    )


def receive(context: Context, message: InboundMessage) -> tuple[AckOutcome, str | None]:
    ack = asyncio.run(receive_provider_message(context, message))
    return ack.outcome, ack.reason


def test_a_message_is_stored_and_applied_and_a_repeat_is_acknowledged_only(
    client: httpx.Client, db: Database, context: Context
) -> None:
    message, (item,) = send_order(client, items=1, seed=401)
    accepted = inbound(report(message, "accepted", 1), key="csv-drop/VNCEL/A-1")
    assert receive(context, accepted) == (AckOutcome.STORED, None)
    assert receive(context, accepted) == (AckOutcome.DUPLICATE, None)
    assert statuses(client, [item]) == ["accepted"]
    assert scalar(db, "SELECT count(*) FROM status_event WHERE source = 'provider:VNCEL'") == 1
    assert (
        scalar(db, "SELECT count(*) FROM audit_event WHERE client_id = 'csv-drop' AND outcome = 'success'")
        == 1
    )


def test_one_refused_report_refuses_the_whole_message(
    client: httpx.Client, db: Database, context: Context
) -> None:
    message, items = send_order(client, items=2, seed=402)
    outcome, reason = receive(
        context, inbound(report(message, "accepted", 1, item=0), report(message, "delivered", 2, item=1))
    )
    assert outcome is AckOutcome.REFUSED
    assert reason is not None and "cannot become 'delivered'" in reason
    assert statuses(client, items) == ["queued", "queued"], "the first report is not applied either"
    assert scalar(db, "SELECT count(*) FROM provider_message") == 0


def test_a_report_about_another_providers_prescription_is_refused_without_saying_whose(
    client: httpx.Client, context: Context
) -> None:
    message, (item,) = send_order(client, items=1, seed=403, performer_ods="VNFKT")
    outcome, reason = receive(context, inbound(report(message, "accepted", 1)))
    assert outcome is AckOutcome.REFUSED
    assert reason is not None and "not routed to VNCEL" in reason and "VNFKT" not in reason
    assert statuses(client, [item]) == ["queued"]


def test_a_provider_the_gateway_does_not_know_is_refused(client: httpx.Client, context: Context) -> None:
    message, _ = send_order(client, items=1, seed=404)
    assert receive(context, inbound(report(message, "accepted", 1), ods="ZZZ99"))[0] is AckOutcome.REFUSED


def test_a_dispense_implies_acceptance_and_records_what_was_dispensed(
    client: httpx.Client, context: Context
) -> None:
    message, (item,) = send_order(client, items=1, seed=405)
    dispensed = DispenseDetail(
        medication_code="39111311000001105",
        medication_display="Adalimumab",
        quantity="2.50",
        unit="pen",
        batch="B1",
    )
    assert (
        receive(context, inbound(report(message, "dispensed", 1, dispense=dispensed)))[0] is AckOutcome.STORED
    )
    assert statuses(client, [item]) == ["dispensed"]
    (dispense,) = dispenses_of(client, item)
    assert dispense["medicationCodeableConcept"]["coding"][0]["code"] == "39111311000001105"
    assert dispense["quantity"] == {"value": 2.50, "unit": "pen"}
    assert dispense["extension"][0]["extension"] == [{"url": "lotNumber", "valueString": "B1"}]


def test_a_query_starts_the_items_query_thread(client: httpx.Client, context: Context) -> None:
    message, (item,) = send_order(client, items=1, seed=406)
    receive(context, inbound(report(message, "accepted", 1)))
    query = report(message, "query", 2, reason_code="dose", reason_text="Please confirm the dose")
    assert receive(context, inbound(query))[0] is AckOutcome.STORED
    thread = client.get("/fhir/Communication", params={"about": f"Task/{item}"}).json()
    assert [entry["resource"]["payload"][0]["contentString"] for entry in thread["entry"]] == [
        "Please confirm the dose"
    ]


def test_a_cancel_refusal_with_no_cancellation_waiting_is_refused(
    client: httpx.Client, context: Context
) -> None:
    message, (item,) = send_order(client, items=1, seed=407)
    receive(context, inbound(report(message, "accepted", 1)))
    refusal = report(message, None, 2, kind=ReportKind.CANCEL_REFUSED, reason_text="too late")
    outcome, reason = receive(context, inbound(refusal))
    assert outcome is AckOutcome.REFUSED and reason is not None and "no cancellation" in reason
    assert statuses(client, [item]) == ["accepted"]


def test_a_database_that_cannot_be_reached_answers_send_it_again(client: httpx.Client) -> None:
    message, _ = send_order(client, items=1, seed=408)
    unreachable = Context.for_database(Database("postgresql://nobody@127.0.0.1:1/none", pool_size=1))
    try:
        outcome, reason = receive(unreachable, inbound(report(message, "accepted", 1)))
    finally:
        unreachable.close()
    assert outcome is AckOutcome.UNAVAILABLE and reason is not None and "send it again" in reason
