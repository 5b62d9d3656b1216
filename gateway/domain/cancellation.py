"""Cancellation: a trust's prescription-order-update, and the provider's answer to it.

An order the provider never received is cancelled at once (its outbox message is withdrawn). An
order the provider has is `cancel-requested`: the trust's message goes to the provider through the
outbox, after the order (never overtaking it), and the provider's answer decides: `cancelled`, or
back to where the items were, with the reason. From `dispensed` on it is too late: refused at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update

from auth.audit import Action, AuditRecord, Outcome, append
from auth.identity import Caller
from fhir_profiles import codes
from fhir_profiles.homecare import Cancellation
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError, success_outcome
from gateway.clock import Clock
from gateway.domain.status import BEFORE_DISPENSED, NOT_YET_AT_PROVIDER, Status
from gateway.domain.status_updates import Applied, change_item, provider_source, trust_source
from gateway.domain.tasks import ItemView
from gateway.store import status as store
from gateway.store.db import Database
from gateway.store.models import InboundMessage, OutboxMessage
from gateway.store.prescriptions import message_row

_message = InboundMessage.__table__  # type: ignore[attr-defined]
_outbox = OutboxMessage.__table__  # type: ignore[attr-defined]

StatusListener = Callable[[Connection, Applied, datetime], None]


@dataclass(frozen=True, slots=True)
class CancelAnswer:
    status_code: int
    body: bytes
    prescription_id: str
    item_ids: tuple[str, ...]
    waiting_for_provider: bool


def _outcome(
    status_code: int, text: str, prescription_id: str, item_ids: list[str], *, waiting: bool
) -> CancelAnswer:
    return CancelAnswer(
        status_code, orjson.dumps(success_outcome(text)), prescription_id, tuple(item_ids), waiting
    )


def receive_cancellation(
    db: Database,
    *,
    cancellation: Cancellation,
    body: bytes,
    digest: str,
    caller: Caller,
    request_id: str,
    clock: Clock,
    notify: StatusListener | None,
) -> CancelAnswer:
    now = clock()
    message_id = str(uuid.uuid4())
    with db.write_connection() as connection:
        items = _items_to_cancel(connection, cancellation, for_update=not db.is_sqlite)
        prescription_id = items[0][0].prescription_id
        too_late = [
            view
            for view, _ in items
            if Status(view.status) not in BEFORE_DISPENSED | {Status.CANCEL_REQUESTED}
        ]
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
        order_state = connection.execute(
            select(_outbox.c.state).where(
                _outbox.c.prescription_id == prescription_id, _outbox.c.kind == "new"
            )
        ).scalar_one_or_none()
        all_items = connection.execute(
            select(store.item_table.c.id).where(store.item_table.c.prescription_id == prescription_id)
        ).all()
        never_sent = order_state in ("pending", "dead") and all(
            Status(view.status) in NOT_YET_AT_PROVIDER for view, _ in items
        )
        if never_sent and len(items) == len(all_items):
            connection.execute(
                update(_outbox)
                .where(_outbox.c.prescription_id == prescription_id, _outbox.c.kind == "new")
                .values(state="cancelled", updated_at=now)
            )
            for view, reason in items:
                store.set_item_status_directly(
                    connection,
                    view,
                    Status.CANCELLED,
                    source=trust_source(caller.ods_code),
                    detail=reason,
                    now=now,
                )
            answer = _outcome(
                200,
                "Cancelled: the provider had not yet received the order",
                prescription_id,
                [view.item_id for view, _ in items],
                waiting=False,
            )
        else:
            for view, reason in items:
                if Status(view.status) is Status.CANCEL_REQUESTED:
                    continue
                change_item(
                    connection,
                    view,
                    status=Status.CANCEL_REQUESTED,
                    occurred_at=now,
                    source=trust_source(caller.ods_code),
                    detail=reason,
                    now=now,
                    expression="Bundle.entry",
                    notify=notify,
                )
            connection.execute(
                insert(_outbox),
                [
                    {
                        "prescription_id": prescription_id,
                        "kind": "cancel",
                        "ordering_key": prescription_id,
                        "provider_ods": items[0][0].provider_ods,
                        "idempotency_key": f"cancel-{message_id}",
                        "message_id": message_id,
                        "state": "pending",
                        "attempts": 0,
                        "due_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                ],
            )
            answer = _outcome(
                202,
                "Cancellation requested from the provider; its answer comes through the items' Tasks",
                prescription_id,
                [view.item_id for view, _ in items],
                waiting=True,
            )
        connection.execute(
            insert(_message),
            [
                message_row(
                    message_id=message_id,
                    tenant_ods=cancellation.sender_ods,
                    bundle_identifier=cancellation.bundle_identifier,
                    event=codes.EVENT_PRESCRIPTION_ORDER_UPDATE,
                    digest=digest,
                    body=body,
                    response_status=answer.status_code,
                    response_body=answer.body,
                    location=None,
                    request_id=request_id,
                    received_at=now,
                )
            ],
        )
        append(
            connection,
            [
                AuditRecord.by(
                    caller,
                    action=Action.UPDATE,
                    outcome=Outcome.SUCCESS,
                    occurred_at=now,
                    request_id=request_id,
                    resource_type="Bundle",
                    resource_id=prescription_id,
                    status=answer.status_code,
                    reason="cancel",
                )
            ],
        )
    return answer


def _items_to_cancel(
    connection: Connection, cancellation: Cancellation, *, for_update: bool
) -> list[tuple[ItemView, dict[str, Any]]]:
    found: list[tuple[ItemView, dict[str, Any]]] = []
    for item_identifier, code, display in cancellation.items:
        located = store.lock_item(
            connection,
            store.item_by_tenant_reference(
                cancellation.short_form_id, item_identifier, cancellation.sender_ods
            ),
            for_update=for_update,
        )
        if located is None:
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
        found.append((located[0], {"reason": {"code": code, "text": display or None}, "cancellation": True}))
    return found


def await_provider_answer(db: Database, answer: CancelAnswer, *, wait_seconds: float) -> CancelAnswer:
    """Wait a little for the provider's answer, so the trust often learns the outcome at once."""
    deadline = time.monotonic() + wait_seconds
    while answer.waiting_for_provider and time.monotonic() < deadline:
        with db.read() as session:
            rows = (
                session.connection()
                .execute(store.views_query().where(store.item_table.c.id.in_(answer.item_ids)))
                .all()
            )
            views = [store.view_from_row(row) for row in rows]
            if all(Status(view.status) is Status.CANCELLED for view in views):
                return _outcome(
                    200,
                    "Cancelled by the provider",
                    answer.prescription_id,
                    list(answer.item_ids),
                    waiting=False,
                )
            if not any(Status(view.status) is Status.CANCEL_REQUESTED for view in views):
                reason = next(
                    (text for view in views if (text := _reason_text(session.connection(), view.item_id))),
                    "no reason given",
                )
                raise OperationOutcomeError(
                    409,
                    [
                        Issue(
                            IssueType.BUSINESS_RULE,
                            ErrorCode.NOT_ALLOWED,
                            f"The provider refused the cancellation: {reason}",
                            "Bundle.entry",
                        )
                    ],
                )
        time.sleep(0.1)
    return answer


def provider_answered_cancel(
    connection: Connection,
    *,
    prescription_id: str,
    provider_ods: str,
    agreed: bool,
    reason: str | None,
    now: datetime,
    notify: StatusListener | None,
) -> None:
    """The provider's system answered our cancel message: cancelled, or back where they were."""
    rows = connection.execute(
        store.views_query()
        .add_columns(store.item_table.c.resume_status)
        .where(
            store.item_table.c.prescription_id == prescription_id,
            store.item_table.c.status == Status.CANCEL_REQUESTED.value,
        )
    ).all()
    for row in rows:
        view = store.view_from_row(row[: len(store.VIEW_COLUMNS)])
        resume = row[len(store.VIEW_COLUMNS)]
        target = Status.CANCELLED if agreed else Status(resume or Status.SENT)
        detail: dict[str, Any] = {"cancellation_answer": "agreed" if agreed else "refused"}
        if reason:
            detail["reason"] = {"code": None, "text": reason[:500]}
        change_item(
            connection,
            view,
            status=target,
            occurred_at=now,
            source=provider_source(provider_ods),
            detail=detail,
            now=now,
            expression=None,
            notify=notify,
        )


def _reason_text(connection: Connection, item_id: str) -> str | None:
    reason = (store.latest_detail(connection, item_id) or {}).get("reason")
    text = reason.get("text") if isinstance(reason, dict) else None
    return str(text) if text else None
