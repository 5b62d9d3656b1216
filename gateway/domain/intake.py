"""Prescription intake: validate an EPS-shaped message, store it durably, answer as EPS does.

Idempotency is keyed per trust on `Bundle.identifier`: the same bytes again get the original answer
and create nothing; the same identifier with other bytes is a conflict. Only accepted messages are
stored, so a corrected resend of a refused message is processed afresh.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller
from auth.scopes import MESSAGE_EVENT_SCOPES
from fhir_profiles import codes
from fhir_profiles.homecare import MessageEnvelope, PrescriptionOrder, validate_message
from fhir_profiles.outcome import (
    ErrorCode,
    Issue,
    IssueType,
    OperationOutcomeError,
    status_for,
    success_outcome,
)
from gateway.clock import Clock
from gateway.domain.access import missing_scope_error
from gateway.store.db import Database
from gateway.store.prescriptions import (
    NewPrescription,
    StoredResponse,
    find_message_response,
    get_provider,
    insert_prescription,
    prescription_id_taken,
)

GATEWAY_SOURCE = "gateway"


@dataclass(frozen=True, slots=True)
class IntakeAnswer:
    status_code: int
    body: bytes
    location: str | None
    replayed: bool
    prescription_id: str | None = None


def receive_message(
    db: Database,
    *,
    body: bytes,
    document: Any,
    caller: Caller,
    request_id: str,
    clock: Clock,
) -> IntakeAnswer:
    """Validate and store one `$process-message` request, or raise the OperationOutcome it deserves."""
    result = validate_message(document)
    envelope = result.envelope
    needed = MESSAGE_EVENT_SCOPES.get(envelope.event or "")
    if needed is not None and not caller.holds(needed):
        raise missing_scope_error([needed])
    if envelope.sender_ods is not None and not caller.may_act_for(envelope.sender_ods):
        raise OperationOutcomeError(
            403,
            [
                Issue(
                    IssueType.FORBIDDEN,
                    ErrorCode.ACCESS_DENIED,
                    "The message's sender (MessageHeader.sender) is not the organisation "
                    "this client acts for",
                    "Bundle.entry[0].resource.sender.identifier.value",
                )
            ],
        )
    digest = hashlib.sha256(body).hexdigest()
    if not result.ok or result.order is None:
        earlier = _earlier_answer(db, envelope, digest)
        if earlier is not None:
            return earlier
        raise OperationOutcomeError(status_for(result.issues), result.issues)

    order = result.order
    with db.read() as session:
        provider = get_provider(session, order.performer_ods)
    if provider is None or not provider.enabled:
        earlier = _earlier_answer(db, envelope, digest)
        if earlier is not None:
            return earlier
        state = (
            "is not a registered homecare provider"
            if provider is None
            else "is not accepting orders (disabled)"
        )
        first = order.items[0].entry_index
        raise OperationOutcomeError(
            422,
            [
                Issue(
                    IssueType.BUSINESS_RULE,
                    ErrorCode.UNKNOWN_PROVIDER,
                    f"The performer ODS code '{order.performer_ods}' {state}",
                    f"Bundle.entry[{first}].resource.dispenseRequest.performer.identifier.value",
                )
            ],
        )

    new, answer = _build_rows(
        order, body=body, digest=digest, caller=caller, request_id=request_id, clock=clock
    )
    try:
        with db.write() as session:
            insert_prescription(session, new)
    except IntegrityError:
        return _resolve_conflict(db, order, digest)
    return answer


def _build_rows(
    order: PrescriptionOrder, *, body: bytes, digest: str, caller: Caller, request_id: str, clock: Clock
) -> tuple[NewPrescription, IntakeAnswer]:
    now = clock()
    prescription_id = str(uuid.uuid4())
    item_ids = [str(uuid.uuid4()) for _ in order.items]
    location = f"/fhir/Bundle/{prescription_id}"
    response = orjson.dumps(
        success_outcome(
            f"Prescription {order.short_form_id} accepted as {prescription_id}; line items: "
            + ", ".join(f"MedicationRequest/{item_id}" for item_id in item_ids)
        )
    )
    message = {
        "id": prescription_id,
        "tenant_ods": order.sender_ods,
        "bundle_identifier": order.bundle_identifier,
        "event": codes.EVENT_PRESCRIPTION_ORDER,
        "body_sha256": digest,
        "body": body,
        "response_status": 200,
        "response_body": response,
        "response_location": location,
        "request_id": request_id,
        "received_at": now,
    }
    prescription = {
        "id": prescription_id,
        "tenant_ods": order.sender_ods,
        "short_form_id": order.short_form_id,
        "long_form_id": order.long_form_id,
        "provider_ods": order.performer_ods,
        "nhs_number": order.nhs_number,
        "prescription_type": order.prescription_type,
        "message_id": prescription_id,
        "status": "received",
        "created_at": now,
        "updated_at": now,
    }
    items = [
        {
            "id": item_id,
            "prescription_id": prescription_id,
            "position": position,
            "item_identifier": item.item_identifier,
            "resource": orjson.dumps(item.resource),
            "status": "received",
            "updated_at": now,
        }
        for position, (item_id, item) in enumerate(zip(item_ids, order.items, strict=True))
    ]
    events = [
        {
            "prescription_id": prescription_id,
            "item_id": None,
            "status": "received",
            "occurred_at": now,
            "recorded_at": now,
            "source": GATEWAY_SOURCE,
            "detail": {"request_id": request_id, "items": len(items)},
        }
    ]
    audit = AuditRecord.by(
        caller,
        action=Action.CREATE,
        outcome=Outcome.SUCCESS,
        occurred_at=now,
        request_id=request_id,
        resource_type="Bundle",
        resource_id=prescription_id,
        status=200,
    )
    new = NewPrescription(
        message=message, prescription=prescription, items=items, events=events, audit=[audit]
    )
    return new, IntakeAnswer(200, response, location, replayed=False, prescription_id=prescription_id)


def _replay_or_conflict(stored: StoredResponse, digest: str) -> IntakeAnswer:
    if stored.body_sha256 == digest:
        return IntakeAnswer(stored.status_code, stored.body, stored.location, replayed=True)
    raise OperationOutcomeError(
        409,
        [
            Issue(
                IssueType.DUPLICATE,
                ErrorCode.DUPLICATE_REJECTED,
                "A different message with this Bundle.identifier was already accepted; "
                "a new message needs a new Bundle.identifier",
                "Bundle.identifier.value",
            )
        ],
    )


def _earlier_answer(db: Database, envelope: MessageEnvelope, digest: str) -> IntakeAnswer | None:
    """A message refused now may resubmit one accepted before: that one's answer stands."""
    if envelope.sender_ods is None or envelope.bundle_identifier is None:
        return None
    with db.read() as session:
        stored = find_message_response(
            session, tenant_ods=envelope.sender_ods, bundle_identifier=envelope.bundle_identifier
        )
    return None if stored is None else _replay_or_conflict(stored, digest)


def _resolve_conflict(db: Database, order: PrescriptionOrder, digest: str) -> IntakeAnswer:
    """Another request won the race or came first: replay it, or say what collided."""
    with db.read() as session:
        stored = find_message_response(
            session, tenant_ods=order.sender_ods, bundle_identifier=order.bundle_identifier
        )
        if stored is not None:
            return _replay_or_conflict(stored, digest)
        if prescription_id_taken(session, tenant_ods=order.sender_ods, short_form_id=order.short_form_id):
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
    raise RuntimeError("integrity error with no conflicting message or prescription")
