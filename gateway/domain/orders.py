"""New prescriptions (`prescription-order`): routed to a registered provider, stored with their opening
status, their order in the outbox and their audit row in one transaction (a group commit)."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time
from typing import Any

import orjson

from auth.audit import Action
from fhir_profiles import codes
from fhir_profiles.homecare import PrescriptionOrder
from fhir_profiles.medication import medicine_name
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain.context import Context, in_thread
from gateway.domain.ids import new_id
from gateway.domain.messages import (
    ContentRefused,
    IntakeAnswer,
    Received,
    audit_entry,
    earlier_answer,
    informational,
    stored_message,
)
from gateway.domain.status import GATEWAY_SOURCE, Status
from gateway.store import events, outbox
from gateway.store.errors import AlreadyStored
from gateway.store.prescriptions import NewItem, NewPrescription, prescription_id_taken, prescription_rows

# A new prescription's items start `queued`, having been `received` (both gateway moves in the table).
OPENING_STATUSES = (Status.RECEIVED, Status.QUEUED)


async def receive_order(ctx: Context, received: Received) -> IntakeAnswer:
    order = received.result.order
    assert order is not None, "an accepted prescription-order carries its order"
    check_provider(ctx, order)
    prescription_id = new_id()
    new, answer = _new_prescription(received, order, prescription_id=prescription_id, now=ctx.clock())
    try:
        await ctx.batch_writer.run(prescription_rows(new))
    except AlreadyStored:
        return await in_thread(_after_collision, ctx, received, order)
    ctx.wake_dispatcher(order.performer_ods)
    return answer


def check_provider(ctx: Context, order: PrescriptionOrder) -> None:
    provider = ctx.provider_directory.get(order.performer_ods)
    if provider is not None and provider.enabled:
        return
    state = (
        "is not a registered homecare provider" if provider is None else "is not accepting orders (disabled)"
    )
    raise ContentRefused(
        422,
        [
            Issue(
                IssueType.BUSINESS_RULE,
                ErrorCode.UNKNOWN_PROVIDER,
                f"The performer ODS code '{order.performer_ods}' {state}",
                f"Bundle.entry[{order.items[0].entry_index}].resource.dispenseRequest.performer.identifier.value",
            )
        ],
    )


def _new_prescription(
    received: Received, order: PrescriptionOrder, *, prescription_id: str, now: datetime
) -> tuple[NewPrescription, IntakeAnswer]:
    items = [
        NewItem(
            new_id(),
            position,
            item.item_identifier,
            orjson.dumps(item.resource),
            medicine_name(item.resource),
        )
        for position, item in enumerate(order.items)
    ]
    answer = informational(
        200,
        f"Prescription {order.short_form_id} accepted as {prescription_id}; line items: "
        + ", ".join(f"MedicationRequest/{item.item_id}" for item in items),
        location=f"/fhir/Bundle/{prescription_id}",
    )
    opening: dict[Status, dict[str, Any]] = {
        Status.RECEIVED: {"request_id": received.request_id, "items": len(items)},
        Status.QUEUED: {"provider": order.performer_ods},
    }
    new = NewPrescription(
        prescription_id=prescription_id,
        tenant_ods=order.sender_ods,
        short_form_id=order.short_form_id,
        long_form_id=order.long_form_id,
        provider_ods=order.performer_ods,
        nhs_number=order.nhs_number,
        prescription_type=order.prescription_type,
        status=OPENING_STATUSES[-1].value,
        valid_until=end_of_validity(order.valid_until),
        created_at=now,
        items=items,
        message=stored_message(
            received, message_id=prescription_id, event=codes.EVENT_PRESCRIPTION_ORDER, answer=answer, now=now
        ),
        events=[
            events.NewEvent(prescription_id, None, status.value, now, now, GATEWAY_SOURCE, opening[status])
            for status in OPENING_STATUSES
        ],
        # Written in the same transaction as the prescription: nothing accepted is ever left unsent.
        outbox=[outbox.order(prescription_id=prescription_id, provider_ods=order.performer_ods, now=now)],
        audit=[
            audit_entry(
                received,
                action=Action.CREATE,
                resource_type="Bundle",
                resource_id=prescription_id,
                status=200,
                now=now,
            )
        ],
    )
    return new, answer


def _after_collision(ctx: Context, received: Received, order: PrescriptionOrder) -> IntakeAnswer:
    """Another request won the race or came first: replay it, or say what collided."""
    earlier = earlier_answer(ctx, received.envelope, received.digest)
    if earlier is not None:
        return earlier
    with ctx.db.snapshot() as tx:
        taken = prescription_id_taken(tx, tenant_ods=order.sender_ods, short_form_id=order.short_form_id)
    if not taken:
        raise RuntimeError("a unique key collided with no earlier message or prescription")
    raise OperationOutcomeError(
        409,
        [
            Issue(
                IssueType.DUPLICATE,
                ErrorCode.DUPLICATE_PRESCRIPTION_ID,
                f"Prescription {order.short_form_id} was already received from this trust; "
                "a new prescription needs a new prescription ID",
                f"Bundle.entry[{order.items[0].entry_index}].resource.groupIdentifier.value",
            )
        ],
    )


def end_of_validity(end: str | None) -> datetime | None:
    """The moment a validity period ends: a date means the end of that day (UTC)."""
    if end is None:
        return None
    if len(end) <= 10:
        year = int(end[:4])
        month = int(end[5:7]) if len(end) >= 7 else 12
        day = int(end[8:10]) if len(end) == 10 else calendar.monthrange(year, month)[1]
        return datetime.combine(date(year, month, day), time.max, tzinfo=UTC)
    return datetime.fromisoformat(end).astimezone(UTC)
