"""Message intake: the one way in for every message, from the API, the demo, scripts and tests.

`receive_message` validates an EPS-shaped message (structure, the homecare profile, the caller's
scope and organisation), hands it to the handler of its event, and audits refusals and replays (an
accepted message's audit row is written with it). Idempotency is keyed per trust on
`Bundle.identifier`: the same bytes again get the original answer and create nothing; the same
identifier with other bytes is a conflict. Only accepted messages are stored, so a corrected resend
of a refused message is processed afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import anyio

from auth.audit import Action, Outcome
from auth.identity import Caller
from auth.scopes import MESSAGE_EVENT_SCOPES
from fhir_profiles import codes
from fhir_profiles.homecare import MessageEnvelope, validate_message
from fhir_profiles.outcome import (
    ErrorCode,
    Issue,
    IssueType,
    OperationOutcomeError,
    Severity,
    operation_outcome,
    status_for,
    success_outcome,
)
from gateway.domain import access
from gateway.domain.cancellation import receive_cancellation
from gateway.domain.context import Context, in_thread
from gateway.domain.dispensing import receive_dispense_notification
from gateway.domain.messages import ContentRefused, IntakeAnswer, Received, earlier_answer
from gateway.domain.orders import check_provider, receive_order

MessageHandler = Callable[[Context, Received], Awaitable[IntakeAnswer]]

HANDLERS: Mapping[str, MessageHandler] = {
    codes.EVENT_PRESCRIPTION_ORDER: receive_order,
    codes.EVENT_PRESCRIPTION_ORDER_UPDATE: receive_cancellation,
    codes.EVENT_DISPENSE_NOTIFICATION: receive_dispense_notification,
}


async def receive_message(
    ctx: Context, *, body: bytes, document: Any, caller: Caller, request_id: str
) -> IntakeAnswer:
    """Validate and act on one message, or raise the OperationOutcome it deserves (audited either way)."""
    try:
        answer = await _receive(ctx, body=body, document=document, caller=caller, request_id=request_id)
    except OperationOutcomeError as refusal:
        await record_refusal(ctx, caller=caller, request_id=request_id, refusal=refusal)
        raise
    if answer.replayed:
        # An accepted message's audit row is written with it; a replay of it gets one of its own.
        resource_id = (answer.location or "").rpartition("/")[2] or None
        await in_thread(
            _audit,
            ctx,
            caller,
            request_id,
            outcome=Outcome.REPLAYED,
            status=answer.status_code,
            resource_id=resource_id,
        )
    return answer


def receive_message_blocking(
    ctx: Context, *, body: bytes, document: Any, caller: Caller, request_id: str
) -> IntakeAnswer:
    """`receive_message` for code without an event loop (scripts, tests): the same path, run to its end."""
    return anyio.run(
        partial(receive_message, ctx, body=body, document=document, caller=caller, request_id=request_id)
    )


async def record_refusal(
    ctx: Context, *, caller: Caller, request_id: str, refusal: OperationOutcomeError
) -> None:
    """Audit a message refused before or during intake (a body that could not be read, say)."""
    await in_thread(_audit, ctx, caller, request_id, outcome=Outcome.REFUSED, status=refusal.status_code)


async def _receive(
    ctx: Context, *, body: bytes, document: Any, caller: Caller, request_id: str
) -> IntakeAnswer:
    # Validation is CPU work and runs here, on the event loop; the handlers write in threads.
    result = validate_message(document, body)
    _authorise(caller, result.envelope)
    received = Received(result, body, hashlib.sha256(body).hexdigest(), caller, request_id)
    try:
        if not result.ok:
            raise ContentRefused(status_for(result.issues), result.issues)
        assert result.envelope.event is not None, "an accepted message names its event"
        return await HANDLERS[result.envelope.event](ctx, received)
    except ContentRefused:
        earlier = await in_thread(earlier_answer, ctx, received.envelope, received.digest)
        if earlier is None:
            raise
        return earlier


async def validate_only(ctx: Context, *, body: bytes, document: Any, caller: Caller) -> dict[str, Any]:
    """`$validate`: intake's checks of a message without acting on it or storing anything.

    The caller needs the scope of the message's event and must be its sender, as for intake (403
    otherwise). The answer is an OperationOutcome: one informational issue when intake would take the
    message up, otherwise every problem it would refuse it for (structure, the homecare profile, and for
    an order its provider: registered and enabled). What depends on what is already stored (a
    duplicate, a cancellation's or dispense's prescription) is judged by $process-message only.
    """
    result = validate_message(document, body)
    _authorise(caller, result.envelope)
    issues = list(result.issues)
    if result.ok and result.order is not None:
        try:
            await in_thread(check_provider, ctx, result.order)
        except ContentRefused as refused:
            issues.extend(refused.issues)
    if any(issue.severity in (Severity.ERROR, Severity.FATAL) for issue in issues):
        return operation_outcome(issues)
    outcome = success_outcome(
        f"Valid {result.envelope.event} message: $process-message would take it up; nothing was stored"
    )
    outcome["issue"].extend(issue.to_fhir() for issue in issues)  # warnings, if any
    return outcome


def _authorise(caller: Caller, envelope: MessageEnvelope) -> None:
    """The scope the message's event needs, and the sender being the caller's own organisation."""
    needed = MESSAGE_EVENT_SCOPES.get(envelope.event or "")
    if needed is not None and not caller.holds(needed):
        raise access.missing_scope_error([needed])
    if envelope.sender_ods is not None and not caller.may_act_for(envelope.sender_ods):
        raise OperationOutcomeError(
            403,
            [
                Issue(
                    IssueType.FORBIDDEN,
                    ErrorCode.ACCESS_DENIED,
                    "The message's sender (MessageHeader.sender) is not the organisation this client acts for",
                    "Bundle.entry[0].resource.sender.identifier.value",
                )
            ],
        )


def _audit(
    ctx: Context,
    caller: Caller,
    request_id: str,
    *,
    outcome: Outcome,
    status: int,
    resource_id: str | None = None,
) -> None:
    access.record(
        ctx.db,
        caller=caller,
        action=Action.CREATE,
        outcome=outcome,
        resource_type="Bundle",
        resource_id=resource_id,
        status=status,
        request_id=request_id,
        clock=ctx.clock,
    )
