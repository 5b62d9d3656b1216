"""What every intake handler shares: the checked message, the answer, the stored message row and its
audit row (built here only), and idempotency (an identical resubmission gets the original answer; the
same `Bundle.identifier` with other bytes is a conflict). Keyed per trust."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller
from fhir_profiles.homecare import MessageEnvelope, ValidationResult
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError, success_outcome
from gateway.domain.context import Context
from gateway.store import messages
from gateway.store.messages import StoredAnswer


@dataclass(frozen=True, slots=True)
class IntakeAnswer:
    status_code: int
    body: bytes
    location: str | None = None
    replayed: bool = False

    @property
    def prescription_id(self) -> str | None:
        """The gateway's id of the prescription the answer is about, when it names one."""
        return self.location.rpartition("/")[2] if self.location else None


@dataclass(frozen=True, slots=True)
class Received:
    """A message as received and checked: its bytes, their digest, who sent it, the checks' result."""

    result: ValidationResult
    body: bytes
    digest: str
    caller: Caller
    request_id: str

    @property
    def envelope(self) -> MessageEnvelope:
        return self.result.envelope


class ContentRefused(OperationOutcomeError):  # noqa: N818  (a refusal, named for what it is)
    """A refusal of the message's content. An identical message accepted earlier still gets its
    original answer: a resubmission is judged by what was decided then."""


def informational(status_code: int, text: str, *, location: str | None = None) -> IntakeAnswer:
    """An accepted message's answer: an informational OperationOutcome, as EPS answers."""
    return IntakeAnswer(status_code, orjson.dumps(success_outcome(text)), location)


def stored_message(
    received: Received, *, message_id: str, event: str, answer: IntakeAnswer, now: datetime
) -> messages.NewMessage:
    """The accepted message as stored: its exact bytes and the answer it got (for replays)."""
    tenant_ods, bundle_identifier = received.envelope.sender_ods, received.envelope.bundle_identifier
    assert tenant_ods is not None and bundle_identifier is not None, "checked by the profile"
    return messages.NewMessage(
        message_id=message_id,
        tenant_ods=tenant_ods,
        bundle_identifier=bundle_identifier,
        event=event,
        body_sha256=received.digest,
        body=received.body,
        response_status=answer.status_code,
        response_body=answer.body,
        response_location=answer.location,
        request_id=received.request_id,
        received_at=now,
    )


def audit_entry(
    received: Received,
    *,
    action: Action,
    resource_type: str,
    resource_id: str,
    status: int,
    now: datetime,
    reason: str | None = None,
) -> AuditRecord:
    """The audit row of an accepted message, written in the message's own transaction."""
    return AuditRecord.by(
        received.caller,
        action=action,
        outcome=Outcome.SUCCESS,
        occurred_at=now,
        request_id=received.request_id,
        resource_type=resource_type,
        resource_id=resource_id,
        status=status,
        reason=reason,
    )


def replay_or_conflict(stored: StoredAnswer, digest: str) -> IntakeAnswer:
    """The original answer to the same bytes; a different message with the same identifier is a 409."""
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


def earlier_answer(ctx: Context, envelope: MessageEnvelope, digest: str) -> IntakeAnswer | None:
    """The answer to an earlier message with this identifier from this trust (or its conflict)."""
    if envelope.sender_ods is None or envelope.bundle_identifier is None:
        return None
    with ctx.db.snapshot() as tx:
        stored = messages.find_answer(
            tx, tenant_ods=envelope.sender_ods, bundle_identifier=envelope.bundle_identifier
        )
    return None if stored is None else replay_or_conflict(stored, digest)
