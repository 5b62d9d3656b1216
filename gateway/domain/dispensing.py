"""Dispense notifications from providers: each MedicationDispense recorded, its item `dispensed`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from sqlalchemy import insert

from auth.audit import Action, AuditRecord, Outcome, append
from auth.identity import Caller
from fhir_profiles import codes
from fhir_profiles.homecare import DispenseNotification
from fhir_profiles.outcome import success_outcome
from gateway.clock import Clock
from gateway.domain.cancellation import StatusListener
from gateway.domain.status import Status
from gateway.domain.status_updates import change_item, not_found, provider_source
from gateway.store import status as store
from gateway.store.db import Database
from gateway.store.models import InboundMessage, MedicationDispenseRecord
from gateway.store.prescriptions import message_row

_message = InboundMessage.__table__  # type: ignore[attr-defined]
_dispense = MedicationDispenseRecord.__table__  # type: ignore[attr-defined]


def _handed_over(value: str | None, fallback: datetime) -> datetime:
    if value is None:
        return fallback
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def receive_dispense_notification(
    db: Database,
    *,
    notification: DispenseNotification,
    body: bytes,
    digest: str,
    caller: Caller,
    request_id: str,
    clock: Clock,
    notify: StatusListener | None,
) -> tuple[int, bytes]:
    """Record every dispense of the message in one transaction, or none of them."""
    now = clock()
    message_id = str(uuid.uuid4())
    recorded = [str(uuid.uuid4()) for _ in notification.dispenses]
    answer = orjson.dumps(
        success_outcome(
            f"Dispense notification recorded: {len(recorded)} MedicationDispense "
            + ", ".join(f"MedicationDispense/{dispense_id}" for dispense_id in recorded)
        )
    )
    with db.write_connection() as connection:
        # The message first: the dispenses refer to it.
        connection.execute(
            insert(_message),
            [
                message_row(
                    message_id=message_id,
                    tenant_ods=notification.sender_ods,
                    bundle_identifier=notification.bundle_identifier,
                    event=codes.EVENT_DISPENSE_NOTIFICATION,
                    digest=digest,
                    body=body,
                    response_status=200,
                    response_body=answer,
                    location=None,
                    request_id=request_id,
                    received_at=now,
                )
            ],
        )
        for dispense_id, dispensed in zip(recorded, notification.dispenses, strict=True):
            located = store.lock_item(
                connection,
                store.item_by_reference(dispensed.short_form_id, dispensed.item_identifier, caller.ods_code),
                for_update=not db.is_sqlite,
            )
            if located is None:
                raise not_found()
            view = located[0]
            occurred_at = _handed_over(dispensed.handed_over, now)
            source = provider_source(caller.ods_code)
            if Status(view.status) in (Status.QUEUED, Status.SENT):
                # A dispense says the provider accepted the order, even if it never said so apart.
                accepted = change_item(
                    connection,
                    view,
                    status=Status.ACCEPTED,
                    occurred_at=occurred_at,
                    source=source,
                    detail={"implied_by": "dispense-notification"},
                    now=now,
                    expression="MedicationDispense",
                    notify=notify,
                )
                view = accepted.view
            change_item(
                connection,
                view,
                status=Status.DISPENSED,
                occurred_at=occurred_at,
                source=source,
                detail={"medication_dispense": True},
                now=now,
                expression="MedicationDispense",
                notify=notify,
            )
            connection.execute(
                insert(_dispense),
                [
                    {
                        "id": dispense_id,
                        "prescription_id": view.prescription_id,
                        "item_id": view.item_id,
                        "message_id": message_id,
                        "resource": orjson.dumps(dispensed.resource),
                        "created_at": now,
                    }
                ],
            )
        append(
            connection,
            [
                AuditRecord.by(
                    caller,
                    action=Action.CREATE,
                    outcome=Outcome.SUCCESS,
                    occurred_at=now,
                    request_id=request_id,
                    resource_type="MedicationDispense",
                    resource_id=dispense_id,
                    status=200,
                )
                for dispense_id in recorded
            ],
        )
    return 200, answer
