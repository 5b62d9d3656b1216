"""Dispensing: a provider's dispense-notification (each MedicationDispense recorded, its item
`dispensed`), and reading the MedicationDispenses back, as tenancy allows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from auth.audit import Action
from auth.identity import Caller, Role
from fhir_profiles import codes
from fhir_profiles.homecare import DispensedItem, DispenseNotification
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain import access
from gateway.domain.context import Context, in_thread
from gateway.domain.messages import (
    IntakeAnswer,
    Received,
    audit_entry,
    earlier_answer,
    informational,
    stored_message,
)
from gateway.domain.reads import item_not_found, not_found
from gateway.domain.search_parameters import SearchParameter
from gateway.domain.status import Status, provider_source
from gateway.domain.status_authority import change_status
from gateway.store import audit, dispenses, items, messages
from gateway.store.db import Tx
from gateway.store.dispenses import Dispense
from gateway.store.errors import AlreadyStored
from gateway.store.items import ItemKey


async def receive_dispense_notification(ctx: Context, received: Received) -> IntakeAnswer:
    """Record every dispense of the message in one transaction, or none of them."""
    notification = received.result.dispense
    assert notification is not None, "an accepted dispense-notification carries its dispenses"
    if received.caller.role is not Role.PROVIDER:
        raise OperationOutcomeError(
            403,
            [
                Issue(
                    IssueType.FORBIDDEN,
                    ErrorCode.ACCESS_DENIED,
                    "Dispense notifications come from the homecare provider",
                    "Bundle.entry[0].resource.eventCoding.code",
                )
            ],
        )
    try:
        earlier = await in_thread(earlier_answer, ctx, received.envelope, received.digest)
        if earlier is not None:
            return earlier
        return await in_thread(_record_dispenses, ctx, received, notification)
    except AlreadyStored:
        earlier = await in_thread(earlier_answer, ctx, received.envelope, received.digest)
        assert earlier is not None, "the collision was with an earlier message"
        return earlier


def _record_dispenses(ctx: Context, received: Received, notification: DispenseNotification) -> IntakeAnswer:
    now = ctx.clock()
    message_id = str(uuid.uuid4())
    recorded = [str(uuid.uuid4()) for _ in notification.dispenses]
    answer = informational(
        200,
        f"Dispense notification recorded: {len(recorded)} MedicationDispense "
        + ", ".join(f"MedicationDispense/{dispense_id}" for dispense_id in recorded),
    )
    with ctx.db.transaction() as tx:
        # The message first: the dispenses refer to it.
        messages.insert_message(
            tx,
            stored_message(
                received,
                message_id=message_id,
                event=codes.EVENT_DISPENSE_NOTIFICATION,
                answer=answer,
                now=now,
            ),
        )
        for dispense_id, dispensed in zip(recorded, notification.dispenses, strict=True):
            _record_dispense(
                ctx,
                tx,
                dispensed,
                dispense_id=dispense_id,
                message_id=message_id,
                provider_ods=received.caller.ods_code,
                now=now,
            )
        audit.record(
            tx,
            [
                audit_entry(
                    received,
                    action=Action.CREATE,
                    resource_type="MedicationDispense",
                    resource_id=dispense_id,
                    status=200,
                    now=now,
                )
                for dispense_id in recorded
            ],
        )
    return answer


def _record_dispense(
    ctx: Context,
    tx: Tx,
    dispensed: DispensedItem,
    *,
    dispense_id: str,
    message_id: str,
    provider_ods: str,
    now: datetime,
) -> None:
    view = items.find(
        tx,
        ItemKey.at_provider(dispensed.short_form_id, dispensed.item_identifier, provider_ods),
        for_change=True,
    )
    if view is None:
        raise item_not_found()
    occurred_at = _handed_over(dispensed.handed_over, now)
    source = provider_source(provider_ods)
    if Status(view.status) in (Status.QUEUED, Status.SENT):
        # A dispense says the provider accepted the order, even if it never said so apart.
        view = change_status(
            tx,
            view,
            Status.ACCEPTED,
            source=source,
            occurred_at=occurred_at,
            detail={"implied_by": "dispense-notification"},
            now=now,
            listener=ctx.listener,
            expression="MedicationDispense",
        ).view
    change_status(
        tx,
        view,
        Status.DISPENSED,
        source=source,
        occurred_at=occurred_at,
        detail={"medication_dispense": True},
        now=now,
        listener=ctx.listener,
        expression="MedicationDispense",
    )
    dispenses.add_dispense(
        tx,
        Dispense(
            dispense_id, view.prescription_id, view.item_id, message_id, orjson.dumps(dispensed.resource), now
        ),
    )


def _handed_over(value: str | None, fallback: datetime) -> datetime:
    if value is None:
        return fallback
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- Reading MedicationDispenses ----------------------------------------------------------------


def _render(dispense: Dispense) -> dict[str, Any]:
    resource: dict[str, Any] = orjson.loads(dispense.resource)
    resource["id"] = dispense.dispense_id
    resource["meta"] = {"lastUpdated": dispense.created_at.isoformat()}
    resource["authorizingPrescription"] = [{"reference": f"MedicationRequest/{dispense.item_id}"}]
    resource.pop("contained", None)
    return resource


def read_dispense(ctx: Context, *, caller: Caller, dispense_id: str, request_id: str) -> dict[str, Any]:
    found = access.audited_lookup(
        ctx.db,
        lambda tx: dispenses.find_dispense(tx, dispense_id, caller=caller),
        caller=caller,
        resource_type="MedicationDispense",
        resource_id=dispense_id,
        request_id=request_id,
        clock=ctx.clock,
        missing=lambda: not_found("MedicationDispense"),
    )
    return _render(found)


DISPENSE_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "prescription",
        "reference",
        "The line item whose dispenses to list, as `MedicationRequest/{id}` (the item's gateway id); required",
        "MedicationRequest/a54219b8-f741-4c47-b662-e4f8dfa49ab6",
    ),
)


def dispenses_of_item(ctx: Context, *, caller: Caller, item_id: str, request_id: str) -> dict[str, Any]:
    with ctx.db.snapshot() as tx:
        found = dispenses.dispenses_of_item(tx, item_id, caller=caller)
    access.record_lookup(
        ctx.db,
        caller=caller,
        resource_type="MedicationDispense",
        resource_id=item_id,
        found=True,
        request_id=request_id,
        clock=ctx.clock,
        action=Action.SEARCH,
    )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": _render(dispense), "search": {"mode": "match"}} for dispense in found],
    }
