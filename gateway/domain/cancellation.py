"""Cancellation: a trust's prescription-order-update, and the provider's answer to it.

An order the provider never received is cancelled at once (its outbox message is withdrawn). An
order the provider has is `cancel-requested`: the trust's message goes to the provider through the
outbox, after the order (never overtaking it), and the provider's answer decides: `cancelled`, or
back to where the items were, with the reason. From `dispensed` on it is too late: refused at once.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from auth.audit import Action
from fhir_profiles import codes
from fhir_profiles.homecare import Cancellation
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain.context import Context, in_thread
from gateway.domain.messages import (
    IntakeAnswer,
    Received,
    audit_entry,
    earlier_answer,
    informational,
    stored_message,
)
from gateway.domain.status import (
    BEFORE_DISPENSED,
    NOT_YET_AT_PROVIDER,
    Status,
    Verdict,
    provider_source,
    trust_source,
)
from gateway.domain.status_authority import Applied, StatusListener, change_status
from gateway.store import audit, events, items, messages, outbox
from gateway.store.db import Tx
from gateway.store.errors import AlreadyStored
from gateway.store.items import ItemKey, ItemView

_CANCELLABLE = BEFORE_DISPENSED | {Status.CANCEL_REQUESTED}


async def receive_cancellation(ctx: Context, received: Received) -> IntakeAnswer:
    cancellation = received.result.cancellation
    assert cancellation is not None, "an accepted prescription-order-update carries its cancellation"
    try:
        earlier = await in_thread(earlier_answer, ctx, received.envelope, received.digest)
        if earlier is not None:
            return earlier
        answer, prescription_id, item_ids = await in_thread(_cancel, ctx, received, cancellation)
    except AlreadyStored:
        earlier = await in_thread(earlier_answer, ctx, received.envelope, received.digest)
        assert earlier is not None, "the collision was with an earlier message"
        return earlier
    if answer.status_code == 202:
        ctx.wake_dispatcher()
        # The provider usually answers in time: then the trust gets the outcome now, not only later.
        answer = await in_thread(_await_provider_answer, ctx, answer, item_ids)
    return IntakeAnswer(answer.status_code, answer.body, f"/fhir/Bundle/{prescription_id}")


def _cancel(
    ctx: Context, received: Received, cancellation: Cancellation
) -> tuple[IntakeAnswer, str, list[str]]:
    now = ctx.clock()
    message_id = str(uuid.uuid4())
    with ctx.db.transaction() as tx:
        located = _items_to_cancel(tx, cancellation)
        prescription_id = located[0][0].prescription_id
        _refuse_too_late([view for view, _ in located])
        if _never_sent(tx, prescription_id, [view for view, _ in located]):
            answer = _cancel_unsent(ctx, tx, located, caller_ods=received.caller.ods_code, now=now)
        else:
            answer = _ask_the_provider(
                ctx, tx, located, caller_ods=received.caller.ods_code, message_id=message_id, now=now
            )
        messages.insert_message(
            tx,
            stored_message(
                received,
                message_id=message_id,
                event=codes.EVENT_PRESCRIPTION_ORDER_UPDATE,
                answer=answer,
                now=now,
            ),
        )
        audit.record(
            tx,
            [
                audit_entry(
                    received,
                    action=Action.UPDATE,
                    resource_type="Bundle",
                    resource_id=prescription_id,
                    status=answer.status_code,
                    now=now,
                    reason="cancel",
                )
            ],
        )
    return answer, prescription_id, [view.item_id for view, _ in located]


def _items_to_cancel(tx: Tx, cancellation: Cancellation) -> list[tuple[ItemView, dict[str, Any]]]:
    found: list[tuple[ItemView, dict[str, Any]]] = []
    for item_identifier, code, display in cancellation.items:
        key = ItemKey.of_trust(cancellation.short_form_id, item_identifier, cancellation.sender_ods)
        view = items.find(tx, key, for_change=True)
        if view is None:
            raise OperationOutcomeError(
                404,
                [
                    Issue(
                        IssueType.NOT_FOUND,
                        ErrorCode.NO_RECORD_FOUND,
                        f"No line item {item_identifier} of prescription {cancellation.short_form_id} "
                        "from this trust",
                        "Bundle.entry",
                    )
                ],
            )
        found.append((view, {"reason": {"code": code, "text": display or None}, "cancellation": True}))
    return found


def _refuse_too_late(views: list[ItemView]) -> None:
    too_late = [view for view in views if Status(view.status) not in _CANCELLABLE]
    if too_late:
        raise OperationOutcomeError(
            409,
            [
                Issue(
                    IssueType.BUSINESS_RULE,
                    ErrorCode.NOT_ALLOWED,
                    f"Too late to cancel: line item {view.item_identifier} is '{view.status}'",
                    "Bundle.entry",
                )
                for view in too_late
            ],
        )


def _never_sent(tx: Tx, prescription_id: str, views: list[ItemView]) -> bool:
    """Whether the whole order is still ours: not sent (or held for a provider that pulls its orders
    and has not acknowledged it), every item named, none at the provider."""
    # Locked: a send that starts now must not deliver an order this answer calls cancelled.
    order_state = outbox.order_state(tx, prescription_id, for_change=True)
    return (
        order_state in (outbox.State.PENDING, outbox.State.DEAD, outbox.State.HELD)
        and all(Status(view.status) in NOT_YET_AT_PROVIDER for view in views)
        and len(views) == len(items.statuses_of(tx, prescription_id))
    )


def _move_items(
    ctx: Context,
    tx: Tx,
    located: list[tuple[ItemView, dict[str, Any]]],
    to: Status,
    *,
    caller_ods: str,
    now: datetime,
) -> None:
    """The trust's move of each named item (those already there stay as they are)."""
    for view, reason in located:
        if Status(view.status) is not to:
            change_status(
                tx,
                view,
                to,
                source=trust_source(caller_ods),
                occurred_at=now,
                detail=reason,
                now=now,
                listener=ctx.listener,
                expression="Bundle.entry",
            )


def _cancel_unsent(
    ctx: Context, tx: Tx, located: list[tuple[ItemView, dict[str, Any]]], *, caller_ods: str, now: datetime
) -> IntakeAnswer:
    outbox.withdraw_order(tx, located[0][0].prescription_id, now=now)
    _move_items(ctx, tx, located, Status.CANCELLED, caller_ods=caller_ods, now=now)
    return informational(200, "Cancelled: the provider had not yet received the order")


def _ask_the_provider(
    ctx: Context,
    tx: Tx,
    located: list[tuple[ItemView, dict[str, Any]]],
    *,
    caller_ods: str,
    message_id: str,
    now: datetime,
) -> IntakeAnswer:
    _move_items(ctx, tx, located, Status.CANCEL_REQUESTED, caller_ods=caller_ods, now=now)
    first = located[0][0]
    outbox.enqueue(
        tx,
        [
            outbox.cancellation(
                prescription_id=first.prescription_id,
                provider_ods=first.provider_ods,
                message_id=message_id,
                now=now,
            )
        ],
    )
    return informational(
        202, "Cancellation requested from the provider; its answer comes through the items' Tasks"
    )


def _await_provider_answer(ctx: Context, answer: IntakeAnswer, item_ids: list[str]) -> IntakeAnswer:
    """Wait a little for the provider's answer, so the trust often learns the outcome at once."""
    deadline = time.monotonic() + ctx.cancel_wait_seconds
    while time.monotonic() < deadline:
        with ctx.db.snapshot() as tx:
            views = items.with_ids(tx, item_ids)
            if all(Status(view.status) is Status.CANCELLED for view in views):
                return informational(200, "Cancelled by the provider")
            if not any(Status(view.status) is Status.CANCEL_REQUESTED for view in views):
                raise OperationOutcomeError(
                    409,
                    [
                        Issue(
                            IssueType.BUSINESS_RULE,
                            ErrorCode.NOT_ALLOWED,
                            f"The provider refused the cancellation: {_refusal_reason(tx, views)}",
                            "Bundle.entry",
                        )
                    ],
                )
        time.sleep(0.1)
    return answer


def _refusal_reason(tx: Tx, views: list[ItemView]) -> str:
    for view in views:
        reason = (events.latest_detail(tx, view.item_id, verdict=Verdict.APPLIED.value) or {}).get("reason")
        text = reason.get("text") if isinstance(reason, dict) else None
        if text:
            return str(text)
    return "no reason given"


def provider_answered_cancel(
    tx: Tx,
    *,
    prescription_id: str,
    provider_ods: str,
    agreed: bool,
    reason: str | None,
    now: datetime,
    listener: StatusListener | None,
    item_id: str | None = None,
    occurred_at: datetime | None = None,
) -> list[Applied]:
    """The provider's system answered our cancel message: cancelled, or back where they were. Every
    item of the prescription waiting for the answer, or only `item_id` when the provider answered
    item by item; `occurred_at` is when the provider answered (default: now)."""
    answered: list[Applied] = []
    for view in items.of_prescription(
        tx, prescription_id, statuses=[Status.CANCEL_REQUESTED.value], for_change=True
    ):
        if item_id is not None and view.item_id != item_id:
            continue
        target = Status.CANCELLED if agreed else Status(view.resume_status or Status.SENT)
        detail: dict[str, Any] = {"cancellation_answer": "agreed" if agreed else "refused"}
        if reason:
            detail["reason"] = {"code": None, "text": reason[:500]}
        answered.append(
            change_status(
                tx,
                view,
                target,
                source=provider_source(provider_ods),
                occurred_at=occurred_at or now,
                detail=detail,
                now=now,
                listener=listener,
            )
        )
    return answered
