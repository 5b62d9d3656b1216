"""Status from providers through their adapters (an HL7 v2 message over MLLP, a row of a status file):
the `ReportSink` the adapters' listeners and pollers hand each message to.

One message is one transaction: the message as received (its de-duplication key unique: a repeat is
acknowledged and applied once), then every report in it through the status authority as
`provider:<ODS>`, the MedicationDispense of a dispensed item, a query's first message, and the audit.
All or nothing: a report about an item not routed to the provider, or an illegal move, refuses the
whole message. The answer is given only after the commit, so an acknowledgement never covers
anything a crash could lose.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import orjson

from adapters.inbound import Ack, InboundMessage, ProviderReport, ReportKind, ReportSink
from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller, Role
from fhir_profiles.identifiers import ODS_SYSTEM
from gateway.domain import access
from gateway.domain.cancellation import provider_answered_cancel
from gateway.domain.context import Context, in_thread
from gateway.domain.provider_queries import record_query_message
from gateway.domain.status import Status, Verdict, provider_source
from gateway.domain.status_authority import Applied, RefusedMove, change_status
from gateway.store import audit, dispenses, items, prescriptions, provider_messages
from gateway.store.db import Tx
from gateway.store.dispenses import Dispense
from gateway.store.errors import AlreadyStored, StoreError
from gateway.store.items import ItemKey, ItemView
from gateway.store.provider_messages import NewProviderMessage

DISPENSE_BATCH_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-DispensedBatch"
_SNOMED = "http://snomed.info/sct"
_DECIMAL = re.compile(r"[+]?(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?")


class _Refused(Exception):  # noqa: N818  (rolls the transaction back; the refusal is answered after)
    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class _Received:
    """One inbound message as this module works on it: who sent it, its id once stored, when."""

    message: InboundMessage
    caller: Caller
    message_id: str
    now: datetime


def report_sink(ctx: Context) -> ReportSink:
    """The sink the gateway gives every adapter's listener and poller."""
    return partial(receive_provider_message, ctx)


async def receive_provider_message(ctx: Context, message: InboundMessage) -> Ack:
    """Store the message, then apply it (one transaction); answer only after the commit."""
    try:
        return await in_thread(_store_and_apply, ctx, message)
    except StoreError:
        return Ack.unavailable("the gateway could not store the message now; send it again")


def _store_and_apply(ctx: Context, message: InboundMessage) -> Ack:
    received = _Received(message, _adapter_caller(message), str(uuid.uuid4()), ctx.clock())
    provider = ctx.provider_directory.get(message.provider_ods)
    if provider is None or not provider.enabled:
        return _refuse(
            ctx, received, _Refused(f"{message.provider_ods} is not a provider here", "unknown-provider")
        )
    if not message.reports:
        return _refuse(ctx, received, _Refused("the message reports no status", "no-reports"))
    try:
        with ctx.db.transaction() as tx:
            provider_messages.insert_message(tx, _new_message(received))
            applied = _apply_all(ctx, tx, received)
            audit.record(tx, [_audit_entry(received, result) for result in applied])
    except AlreadyStored:
        with ctx.db.snapshot() as tx:
            if provider_messages.is_stored(tx, message.dedupe_key):
                return Ack.duplicate()
        raise
    except _Refused as refusal:
        return _refuse(ctx, received, refusal)
    return Ack.stored()


def _adapter_caller(message: InboundMessage) -> Caller:
    """Who speaks, for the audit and tenancy: the provider as the adapter authenticated it."""
    return Caller(client_id=message.scheme, role=Role.PROVIDER, ods_code=message.provider_ods)


def _new_message(received: _Received) -> NewProviderMessage:
    message = received.message
    return NewProviderMessage(
        message_id=received.message_id,
        dedupe_key=message.dedupe_key,
        scheme=message.scheme,
        provider_ods=message.provider_ods,
        peer=message.peer[:300] if message.peer else None,
        raw=message.raw,
        reports=len(message.reports),
        received_at=received.now,
    )


def _apply_all(ctx: Context, tx: Tx, received: _Received) -> list[Applied]:
    """Every report of the message, in order; every refusal named at once (nothing is applied then)."""
    applied: list[Applied] = []
    problems: list[str] = []
    codes: list[str] = []
    for report in received.message.reports:
        try:
            applied.extend(_apply(ctx, tx, received, report))
        except _Refused as refusal:
            problems.append(refusal.reason)
            codes.append(refusal.code)
        except RefusedMove as refusal:
            problems.append(f"line item {report.item_identifier}: {refusal.issues[0].diagnostics}")
            codes.append("illegal-transition")
    if problems:
        raise _Refused("; ".join(problems), codes[0])
    return applied


def _apply(ctx: Context, tx: Tx, received: _Received, report: ProviderReport) -> list[Applied]:
    ods = received.message.provider_ods
    view = items.find(
        tx, ItemKey.at_provider(report.short_form_id, report.item_identifier, ods), for_change=True
    )
    if view is None:
        raise _Refused(
            f"line item {report.item_identifier} of prescription {report.short_form_id} "
            f"is not routed to {ods}",
            "not-routed",
        )
    if report.kind is ReportKind.CANCEL_REFUSED:
        return _cancel_refused(ctx, tx, received, report, view)
    assert report.status is not None, "a status report names its status (adapters.inbound.checked_report)"
    status = Status(report.status)
    detail = _detail(report, received)
    if status is Status.DISPENSED:
        return _dispensed(ctx, tx, received, report, view, detail)
    occurred_at = report.occurred_at
    if status is Status.CANCELLED and Status(view.status) is Status.CANCEL_REQUESTED:
        detail["cancellation_answer"] = "agreed"
        occurred_at = _answer_time(report, view)
    result = _change(ctx, tx, received, view, status, occurred_at, detail)
    if status is Status.QUERY and result.verdict is Verdict.APPLIED:
        record_query_message(
            tx,
            result.view,
            author_role="provider",
            author_ods=ods,
            text=report.reason_text or report.reason_code or "Query raised (no text given)",
            sent_at=report.occurred_at,
            request_id=received.message_id,
        )
    return [result]


def _change(
    ctx: Context,
    tx: Tx,
    received: _Received,
    view: ItemView,
    status: Status,
    occurred_at: datetime,
    detail: dict[str, Any],
) -> Applied:
    return change_status(
        tx,
        view,
        status,
        source=provider_source(received.message.provider_ods),
        occurred_at=occurred_at,
        detail=detail,
        now=received.now,
        listener=ctx.listener,
    )


def _cancel_refused(
    ctx: Context, tx: Tx, received: _Received, report: ProviderReport, view: ItemView
) -> list[Applied]:
    """The provider will not cancel the item: it goes back to where it was."""
    if Status(view.status) is not Status.CANCEL_REQUESTED:
        raise _Refused(
            f"line item {report.item_identifier} is '{view.status}': no cancellation waits for an answer",
            "no-cancellation-pending",
        )
    return provider_answered_cancel(
        tx,
        prescription_id=view.prescription_id,
        provider_ods=received.message.provider_ods,
        agreed=False,
        reason=report.reason_text or report.reason_code or "the provider refused the cancellation",
        now=received.now,
        listener=ctx.listener,
        item_id=view.item_id,
        occurred_at=_answer_time(report, view),
    )


def _answer_time(report: ProviderReport, view: ItemView) -> datetime:
    """When the provider answered a cancellation: never before the request it answers. HL7 v2 times
    are to the second, so an answer in the same second would otherwise sort before the request."""
    asked_at = view.last_modified
    return report.occurred_at if asked_at is None else max(report.occurred_at, asked_at)


def _dispensed(
    ctx: Context,
    tx: Tx,
    received: _Received,
    report: ProviderReport,
    view: ItemView,
    detail: dict[str, Any],
) -> list[Applied]:
    """As a dispense-notification: implied acceptance, `dispensed`, and a MedicationDispense."""
    applied: list[Applied] = []
    if Status(view.status) in (Status.QUEUED, Status.SENT):
        implied = {**detail, "implied_by": "dispensed"}
        applied.append(_change(ctx, tx, received, view, Status.ACCEPTED, report.occurred_at, implied))
        view = applied[-1].view
    detail["medication_dispense"] = True
    applied.append(_change(ctx, tx, received, view, Status.DISPENSED, report.occurred_at, detail))
    if applied[-1].verdict is Verdict.APPLIED:
        dispenses.add_dispense(
            tx,
            Dispense(
                dispense_id=str(uuid.uuid4()),
                prescription_id=view.prescription_id,
                item_id=view.item_id,
                message_id=None,
                resource=orjson.dumps(_medication_dispense(tx, received, report, view)),
                created_at=received.now,
                provider_message_id=received.message_id,
            ),
        )
    return applied


def _medication_dispense(
    tx: Tx, received: _Received, report: ProviderReport, view: ItemView
) -> dict[str, Any]:
    """A MedicationDispense from what the provider said; the prescribed medicine when it named none."""
    dispensed = report.dispense
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "performer": [
            {"actor": {"identifier": {"system": ODS_SYSTEM, "value": received.message.provider_ods}}}
        ],
        "whenPrepared": report.occurred_at.isoformat(),
    }
    if dispensed is not None and (dispensed.medication_code or dispensed.medication_display):
        concept: dict[str, Any] = {}
        if dispensed.medication_code:
            concept["coding"] = [{"system": _SNOMED, "code": dispensed.medication_code}]
            if dispensed.medication_display:
                concept["coding"][0]["display"] = dispensed.medication_display
        if dispensed.medication_display:
            concept["text"] = dispensed.medication_display
        resource["medicationCodeableConcept"] = concept
    else:
        resource["medicationCodeableConcept"] = _prescribed_medication(tx, received, view)
    if dispensed is not None and dispensed.quantity and _DECIMAL.fullmatch(dispensed.quantity):
        # The provider's decimal as written: a JSON number without a round trip through float.
        resource["quantity"] = {"value": orjson.Fragment(dispensed.quantity.lstrip("+"))}
        if dispensed.unit:
            resource["quantity"]["unit"] = dispensed.unit
    if dispensed is not None and (dispensed.batch or dispensed.expiry):
        batch = [
            {"url": url, value_key: value}
            for url, value_key, value in (
                ("lotNumber", "valueString", dispensed.batch),
                ("expirationDate", "valueDate", dispensed.expiry),
            )
            if value
        ]
        resource["extension"] = [{"url": DISPENSE_BATCH_URL, "extension": batch}]
    return resource


def _prescribed_medication(tx: Tx, received: _Received, view: ItemView) -> dict[str, Any]:
    stored = prescriptions.stored_item(tx, view.item_id, caller=received.caller)
    prescribed: dict[str, Any] = orjson.loads(stored.resource) if stored is not None else {}
    medication = prescribed.get("medicationCodeableConcept")
    return medication if isinstance(medication, dict) else {"text": "as prescribed"}


def _detail(report: ProviderReport, received: _Received) -> dict[str, Any]:
    """What the Task shows of the report (reason, who caused it, delivery), and where it came from."""
    detail: dict[str, Any] = {"via": received.message.scheme, "provider_message_id": received.message_id}
    if report.reason_code or report.reason_text:
        detail["reason"] = {"code": report.reason_code, "text": report.reason_text}
    if report.responsible_party:
        detail["responsible_party"] = report.responsible_party
    if report.delivery_window is not None:
        detail["delivery_window"] = {
            "start": report.delivery_window.start.isoformat(),
            "end": report.delivery_window.end.isoformat(),
        }
    if report.delivery_attempt is not None:
        detail["delivery_attempt"] = report.delivery_attempt
    return detail


def _audit_entry(received: _Received, result: Applied) -> AuditRecord:
    return AuditRecord.by(
        received.caller,
        action=Action.UPDATE,
        outcome=Outcome.SUCCESS,
        occurred_at=received.now,
        request_id=received.message_id,
        resource_type="Task",
        resource_id=result.view.item_id,
        status=200,
        reason=result.verdict.value,
    )


def _refuse(ctx: Context, received: _Received, refusal: _Refused) -> Ack:
    access.record(
        ctx.db,
        caller=received.caller,
        action=Action.UPDATE,
        outcome=Outcome.REFUSED,
        resource_type="Task",
        resource_id=None,
        status=409 if refusal.code == "illegal-transition" else 422,
        request_id=received.message_id,
        clock=ctx.clock,
        reason=refusal.code,
    )
    return Ack.refused(refusal.reason, refusal.code)
