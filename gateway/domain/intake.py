"""Prescription intake: validate an EPS-shaped message, store it durably, answer as EPS does.

Idempotency is keyed per trust on `Bundle.identifier`: the same bytes again get the original answer
and create nothing; the same identifier with other bytes is a conflict. Only accepted messages are
stored, so a corrected resend of a refused message is processed afresh.
"""

from __future__ import annotations

import calendar
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller, Role
from auth.scopes import MESSAGE_EVENT_SCOPES
from fhir_profiles import codes
from fhir_profiles.homecare import (
    Cancellation,
    DispenseNotification,
    MessageEnvelope,
    PrescriptionOrder,
    validate_message,
)
from fhir_profiles.medication import medicine_name
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
from gateway.domain.status import GATEWAY_SOURCE, Status
from gateway.store.db import Database
from gateway.store.prescriptions import (
    NewPrescription,
    StoredResponse,
    find_message_response,
    insert_prescription,
    message_row,
    prescription_id_taken,
)
from gateway.store.providers import ProviderDirectory


@dataclass(frozen=True, slots=True)
class IntakeAnswer:
    status_code: int
    body: bytes
    location: str | None
    replayed: bool
    prescription_id: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A message refused by its content; an earlier accepted resubmission's answer still wins."""

    error: OperationOutcomeError
    envelope: MessageEnvelope
    digest: str


@dataclass(frozen=True, slots=True)
class Acceptance:
    """A message that passed every check: the rows to write and the answer to give once written."""

    order: PrescriptionOrder
    digest: str
    rows: NewPrescription
    answer: IntakeAnswer


@dataclass(frozen=True, slots=True)
class CancelRequest:
    cancellation: Cancellation
    envelope: MessageEnvelope
    digest: str


@dataclass(frozen=True, slots=True)
class DispenseRequest:
    notification: DispenseNotification
    envelope: MessageEnvelope
    digest: str


def check_message(
    *,
    body: bytes,
    document: Any,
    caller: Caller,
    providers: ProviderDirectory,
    request_id: str,
    clock: Clock,
) -> Acceptance | CancelRequest | DispenseRequest | Refusal:
    """Everything intake decides without writing: validation, tenancy, the provider registry."""
    result = validate_message(document, body)
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
    if result.ok and result.cancellation is not None:
        return CancelRequest(result.cancellation, envelope, digest)
    if result.ok and result.dispense is not None:
        if caller.role is not Role.PROVIDER:
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
        return DispenseRequest(result.dispense, envelope, digest)
    if not result.ok or result.order is None:
        return Refusal(OperationOutcomeError(status_for(result.issues), result.issues), envelope, digest)
    order = result.order
    provider = providers.get(order.performer_ods)
    if provider is None or not provider.enabled:
        state = (
            "is not a registered homecare provider"
            if provider is None
            else "is not accepting orders (disabled)"
        )
        first = order.items[0].entry_index
        error = OperationOutcomeError(
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
        return Refusal(error, envelope, digest)
    rows, answer = _build_rows(
        order, body=body, digest=digest, caller=caller, request_id=request_id, clock=clock
    )
    return Acceptance(order, digest, rows, answer)


def earlier_answer(db: Database, envelope: MessageEnvelope, digest: str) -> IntakeAnswer:
    """After a write found this message's identifier taken: the original answer, or a conflict."""
    earlier = _earlier_answer(db, envelope, digest)
    if earlier is None:
        raise RuntimeError("integrity error with no earlier message")
    return earlier


def answer_refusal(db: Database, refusal: Refusal) -> IntakeAnswer:
    """The earlier answer when this refused message resubmits an accepted one; else the refusal."""
    earlier = _earlier_answer(db, refusal.envelope, refusal.digest)
    if earlier is None:
        raise refusal.error
    return earlier


def receive_message(
    db: Database,
    *,
    providers: ProviderDirectory,
    body: bytes,
    document: Any,
    caller: Caller,
    request_id: str,
    clock: Clock,
) -> IntakeAnswer:
    """Validate and store one `$process-message` request, or raise the OperationOutcome it deserves.

    The synchronous form, one transaction per message; the API batches writes (see `BatchWriter`).
    """
    decision = check_message(
        body=body, document=document, caller=caller, providers=providers, request_id=request_id, clock=clock
    )
    if isinstance(decision, Refusal):
        return answer_refusal(db, decision)
    if not isinstance(decision, Acceptance):
        raise ValueError("receive_message takes prescription orders; the API handles the other events")
    try:
        with db.write_connection() as connection:
            insert_prescription(connection, new=decision.rows)
    except IntegrityError:
        return resolve_conflict(db, decision)
    return decision.answer


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
    message = message_row(
        message_id=prescription_id,
        tenant_ods=order.sender_ods,
        bundle_identifier=order.bundle_identifier,
        event=codes.EVENT_PRESCRIPTION_ORDER,
        digest=digest,
        body=body,
        response_status=200,
        response_body=response,
        location=location,
        request_id=request_id,
        received_at=now,
    )
    prescription = {
        "id": prescription_id,
        "tenant_ods": order.sender_ods,
        "short_form_id": order.short_form_id,
        "long_form_id": order.long_form_id,
        "provider_ods": order.performer_ods,
        "nhs_number": order.nhs_number,
        "prescription_type": order.prescription_type,
        "message_id": prescription_id,
        "status": Status.QUEUED.value,
        "valid_until": end_of_validity(order.valid_until),
        "created_at": now,
        "updated_at": now,
        "status_since": now,
    }
    items = [
        {
            "id": item_id,
            "prescription_id": prescription_id,
            "position": position,
            "item_identifier": item.item_identifier,
            "tenant_ods": order.sender_ods,
            "provider_ods": order.performer_ods,
            "resource": orjson.dumps(item.resource),
            "medicine": medicine_name(item.resource),
            "status": Status.QUEUED.value,
            "updated_at": now,
        }
        for position, (item_id, item) in enumerate(zip(item_ids, order.items, strict=True))
    ]
    events = [
        {
            "prescription_id": prescription_id,
            "item_id": None,
            "status": status.value,
            "occurred_at": now,
            "recorded_at": now,
            "source": GATEWAY_SOURCE,
            "detail": detail,
        }
        for status, detail in (
            (Status.RECEIVED, {"request_id": request_id, "items": len(items)}),
            (Status.QUEUED, {"provider": order.performer_ods}),
        )
    ]
    # Written in the same transaction as the prescription: nothing accepted is ever left unsent.
    outbox = [
        {
            "prescription_id": prescription_id,
            "kind": "new",
            "provider_ods": order.performer_ods,
            "idempotency_key": f"order-{prescription_id}",
            "ordering_key": prescription_id,
            "state": "pending",
            "attempts": 0,
            "due_at": now,
            "created_at": now,
            "updated_at": now,
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
        message=message, prescription=prescription, items=items, events=events, outbox=outbox, audit=[audit]
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


def resolve_conflict(db: Database, acceptance: Acceptance) -> IntakeAnswer:
    """Another request won the race or came first: replay it, or say what collided."""
    order, digest = acceptance.order, acceptance.digest
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
