"""The transactional outbox: claiming due messages, and recording what became of each send.

Claims are leases: a worker that dies mid-send leaves its rows in `sending` until `lease_until`,
then any worker claims them again (the provider may see a message twice, never zero times; the
idempotency key lets it notice). On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`, so workers on
any number of machines never claim the same row at once; on SQLite the claim runs under the single
write lock, which gives the same guarantee. A message is only claimable when no earlier message with
the same ordering key is still pending or sending: a provider message's key is its prescription, so a
cancel never overtakes its order; a notification's is its subscription (`sub:<id>`), so a subscriber
gets its notifications in order and they never wait behind sends to providers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import aliased

from adapters.base import OrderKind
from gateway.domain.cancellation import StatusListener, provider_answered_cancel
from gateway.domain.status import GATEWAY_SOURCE, Status, Verdict
from gateway.domain.status_updates import Applied
from gateway.domain.tasks import render_task
from gateway.store.db import Database
from gateway.store.models import (
    InboundMessage,
    OutboxMessage,
    Prescription,
    PrescriptionItem,
    StatusEvent,
    Subscription,
)
from gateway.store.status import refresh_prescription_status, view_from_row, views_query

PENDING, SENDING, DONE, DEAD = "pending", "sending", "done", "dead"

_outbox = OutboxMessage.__table__  # type: ignore[attr-defined]
_prescription = Prescription.__table__  # type: ignore[attr-defined]
_message = InboundMessage.__table__  # type: ignore[attr-defined]
_event = StatusEvent.__table__  # type: ignore[attr-defined]
_item = PrescriptionItem.__table__  # type: ignore[attr-defined]
_subscription = Subscription.__table__  # type: ignore[attr-defined]
_is_provider_message = _outbox.c.subscription_id.is_(None)


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A claimed outbox row with what its adapter needs to send it."""

    outbox_id: int
    prescription_id: str
    kind: OrderKind
    provider_ods: str
    idempotency_key: str
    attempts: int
    short_form_id: str
    tenant_ods: str
    body: bytes
    request_id: str


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    """A claimed notification with what its delivery needs: the subscriber's channel and the payload.

    `headers` are the subscriber's own (an Authorization header, say): never log them.
    """

    outbox_id: int
    subscription_id: str
    prescription_id: str
    idempotency_key: str
    attempts: int
    payload: bytes | None
    endpoint: str
    headers: tuple[str, ...]
    subscription_status: str


def claim_due(
    db: Database,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    skip_providers: frozenset[str] = frozenset(),
    notifications: bool = True,
) -> list[ClaimedMessage | ClaimedNotification]:
    """Lease up to `limit` due messages to `owner`; expired leases of dead workers count as due.

    `skip_providers` holds back messages to those providers (not notifications about their
    prescriptions); `notifications=False` leaves notifications to dispatchers that can sign them.
    """
    earlier = aliased(_outbox)
    blocked_by_earlier = exists().where(
        and_(
            earlier.c.ordering_key == _outbox.c.ordering_key,
            earlier.c.id < _outbox.c.id,
            earlier.c.state.in_((PENDING, SENDING)),
        )
    )
    due = or_(
        and_(_outbox.c.state == PENDING, _outbox.c.due_at <= now),
        and_(_outbox.c.state == SENDING, _outbox.c.lease_until < now),
    )
    query = (
        select(_outbox.c.id)
        .where(due, ~blocked_by_earlier)
        .order_by(_outbox.c.due_at, _outbox.c.id)
        .limit(limit)
    )
    if skip_providers:
        query = query.where(or_(~_is_provider_message, _outbox.c.provider_ods.not_in(sorted(skip_providers))))
    if not notifications:
        query = query.where(_is_provider_message)
    with db.write_connection() as connection:
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=_outbox)
        ids = [row[0] for row in connection.execute(query)]
        if not ids:
            return []
        connection.execute(
            update(_outbox)
            .where(_outbox.c.id.in_(ids))
            .values(state=SENDING, lease_owner=owner, lease_until=now + lease, updated_at=now)
        )
        rows = connection.execute(
            select(
                _outbox.c.id,
                _outbox.c.prescription_id,
                _outbox.c.kind,
                _outbox.c.provider_ods,
                _outbox.c.idempotency_key,
                _outbox.c.attempts,
                _prescription.c.short_form_id,
                _prescription.c.tenant_ods,
                _message.c.body,
                _message.c.request_id,
            )
            .join(_prescription, _prescription.c.id == _outbox.c.prescription_id)
            .join(_message, _message.c.id == func.coalesce(_outbox.c.message_id, _prescription.c.message_id))
            .where(_outbox.c.id.in_(ids), _is_provider_message)
            .order_by(_outbox.c.id)
        ).all()
        notification_rows = connection.execute(
            select(
                _outbox.c.id,
                _outbox.c.subscription_id,
                _outbox.c.prescription_id,
                _outbox.c.idempotency_key,
                _outbox.c.attempts,
                _outbox.c.payload,
                _subscription.c.endpoint,
                _subscription.c.headers,
                _subscription.c.status,
            )
            .join(_subscription, _subscription.c.id == _outbox.c.subscription_id)
            .where(_outbox.c.id.in_(ids))
            .order_by(_outbox.c.id)
        ).all()
    # The provider-message select lists its columns in ClaimedMessage's field order.
    provider_messages: list[ClaimedMessage | ClaimedNotification] = [
        ClaimedMessage(*row) for row in cast(list[Any], rows)
    ]
    notifications_claimed: list[ClaimedMessage | ClaimedNotification] = [
        ClaimedNotification(
            outbox_id=row[0],
            subscription_id=row[1],
            prescription_id=row[2],
            idempotency_key=row[3],
            attempts=row[4],
            payload=row[5],
            endpoint=row[6],
            headers=tuple(row[7] or ()),
            subscription_status=row[8],
        )
        for row in notification_rows
    ]
    return sorted(provider_messages + notifications_claimed, key=lambda claimed: claimed.outbox_id)


def still_ours(owner: str, outbox_id: int) -> Any:
    """The condition that a claimed row is still leased to `owner`: only then is its result recorded."""
    return and_(_outbox.c.id == outbox_id, _outbox.c.state == SENDING, _outbox.c.lease_owner == owner)


def release_claim(
    connection: Connection, owner: str, outbox_id: int, *, now: datetime, **values: Any
) -> bool:
    """End `owner`'s lease on a claimed row, setting `values` (its new state...); False when the lease
    was lost meanwhile (another worker has the row now) and nothing was changed."""
    changed = connection.execute(
        update(_outbox)
        .where(still_ours(owner, outbox_id))
        .values(lease_owner=None, lease_until=None, updated_at=now, **values)
    )
    return bool(changed.rowcount)


def _set_status(
    connection: Connection,
    *,
    prescription_id: str,
    status: Status,
    now: datetime,
    detail: dict[str, Any],
    only_from: tuple[Status, ...],
    notify: StatusListener | None = None,
) -> None:
    # The gateway's own steps apply to the line items still at the step before; the prescription's
    # status then follows from its items.
    changed = connection.execute(
        update(_item)
        .where(_item.c.prescription_id == prescription_id, _item.c.status.in_([s.value for s in only_from]))
        .values(status=status.value, updated_at=now, version=_item.c.version + 1)
    ).rowcount
    if changed:
        refresh_prescription_status(connection, prescription_id, now=now)
        if notify is not None:
            _tell_listener(connection, prescription_id, status, now, notify)
        connection.execute(
            insert(_event),
            [
                {
                    "prescription_id": prescription_id,
                    "item_id": None,
                    "status": status.value,
                    "occurred_at": now,
                    "recorded_at": now,
                    "source": GATEWAY_SOURCE,
                    "detail": detail,
                }
            ],
        )


def _tell_listener(
    connection: Connection, prescription_id: str, status: Status, now: datetime, notify: StatusListener
) -> None:
    """The items the gateway itself just moved, offered to the listener (subscriptions) like any change."""
    rows = connection.execute(
        views_query().where(_item.c.prescription_id == prescription_id, _item.c.status == status.value)
    ).all()
    for row in rows:
        view = view_from_row(row)
        notify(connection, Applied(task=render_task(view), verdict=Verdict.APPLIED, view=view), now)


def record_delivered(
    connection: Connection,
    claimed: ClaimedMessage,
    *,
    owner: str,
    now: datetime,
    notify: StatusListener | None = None,
) -> bool:
    """The provider's system took the message: an order is `sent`, a cancellation is agreed.
    False if the lease was lost meanwhile (another worker has the message now)."""
    return _record_answer(connection, claimed, owner=owner, now=now, refusal=None, notify=notify)


def record_rejected(
    connection: Connection,
    claimed: ClaimedMessage,
    *,
    owner: str,
    now: datetime,
    reason: str,
    code: str | None,
    notify: StatusListener | None = None,
) -> bool:
    """The provider refused the message for good: an order is `rejected` with the reason, a
    cancellation refused (the items go back where they were)."""
    return _record_answer(
        connection, claimed, owner=owner, now=now, refusal=(reason[:500], code), notify=notify
    )


def _record_answer(
    connection: Connection,
    claimed: ClaimedMessage,
    *,
    owner: str,
    now: datetime,
    refusal: tuple[str, str | None] | None,
    notify: StatusListener | None,
) -> bool:
    if not release_claim(
        connection, owner, claimed.outbox_id, now=now, state=DONE, last_error=refusal[0] if refusal else None
    ):
        return False
    if claimed.kind != "new":
        provider_answered_cancel(
            connection,
            prescription_id=claimed.prescription_id,
            provider_ods=claimed.provider_ods,
            agreed=refusal is None,
            reason=refusal[0] if refusal else None,
            now=now,
            notify=notify,
        )
    elif refusal is None:
        _set_status(
            connection,
            prescription_id=claimed.prescription_id,
            status=Status.SENT,
            now=now,
            detail={"provider": claimed.provider_ods, "attempts": claimed.attempts + 1},
            only_from=(Status.QUEUED,),
            notify=notify,
        )
    else:
        _set_status(
            connection,
            prescription_id=claimed.prescription_id,
            status=Status.REJECTED,
            now=now,
            detail={"provider": claimed.provider_ods, "reason": refusal[0], "code": refusal[1]},
            only_from=(Status.QUEUED, Status.SENT),
            notify=notify,
        )
    return True


def record_failure(
    connection: Connection,
    claimed: ClaimedMessage,
    *,
    owner: str,
    now: datetime,
    error: str,
    retry_at: datetime | None,
    notify: StatusListener | None = None,
) -> bool:
    """A retryable failure: due again at `retry_at`, or dead (`undeliverable`) when it is None."""
    values: dict[str, Any] = {"attempts": claimed.attempts + 1, "last_error": error[:500]}
    values.update({"state": DEAD} if retry_at is None else {"state": PENDING, "due_at": retry_at})
    if not release_claim(connection, owner, claimed.outbox_id, now=now, **values):
        return False
    if retry_at is None and claimed.kind == "new":
        _set_status(
            connection,
            prescription_id=claimed.prescription_id,
            status=Status.UNDELIVERABLE,
            now=now,
            detail={
                "provider": claimed.provider_ods,
                "attempts": claimed.attempts + 1,
                "error": error[:200],
            },
            only_from=(Status.QUEUED,),
            notify=notify,
        )
    return True


def redrive(
    db: Database, *, now: datetime, prescription_id: str | None = None, provider_ods: str | None = None
) -> int:
    """Put dead messages to providers back in the queue (after the provider is fixed); returns how many.

    Dead notifications stay dead: their subscription is in error, and the subscriber resynchronises.
    """
    conditions = [_outbox.c.state == DEAD, _is_provider_message]
    if prescription_id is not None:
        conditions.append(_outbox.c.prescription_id == prescription_id)
    if provider_ods is not None:
        conditions.append(_outbox.c.provider_ods == provider_ods)
    with db.write_connection() as connection:
        rows = connection.execute(
            select(_outbox.c.id, _outbox.c.prescription_id, _outbox.c.kind).where(*conditions)
        ).all()
        if not rows:
            return 0
        connection.execute(
            update(_outbox)
            .where(_outbox.c.id.in_([row[0] for row in rows]))
            .values(state=PENDING, attempts=0, due_at=now, last_error=None, updated_at=now)
        )
        for _, dead_prescription, kind in rows:
            if kind == "new":
                _set_status(
                    connection,
                    prescription_id=dead_prescription,
                    status=Status.QUEUED,
                    now=now,
                    detail={"redriven": True},
                    only_from=(Status.UNDELIVERABLE,),
                )
    return len(rows)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    due: int
    oldest_due_age_seconds: float
    dead: int
    by_provider_dead: dict[str, int]


def stats(db: Database, *, now: datetime) -> OutboxStats:
    with db.read() as session:
        connection = session.connection()
        by_state: dict[str, int] = dict(
            connection.execute(select(_outbox.c.state, func.count()).group_by(_outbox.c.state)).all()
        )
        due_filter = or_(
            and_(_outbox.c.state == PENDING, _outbox.c.due_at <= now),
            and_(_outbox.c.state == SENDING, _outbox.c.lease_until < now),
        )
        due, oldest = connection.execute(
            select(func.count(), func.min(_outbox.c.due_at)).where(due_filter)
        ).one()
        dead_by_provider: dict[str, int] = dict(
            connection.execute(
                select(_outbox.c.provider_ods, func.count())
                .where(_outbox.c.state == DEAD, _is_provider_message)
                .group_by(_outbox.c.provider_ods)
            ).all()
        )
    oldest_age = 0.0
    if oldest is not None:
        oldest_moment = oldest if isinstance(oldest, datetime) else datetime.fromisoformat(str(oldest))
        if oldest_moment.tzinfo is None:
            oldest_moment = oldest_moment.replace(tzinfo=now.tzinfo)
        oldest_age = max(0.0, (now - oldest_moment).total_seconds())
    return OutboxStats(
        depth=int(by_state.get(PENDING, 0)) + int(by_state.get(SENDING, 0)),
        due=int(due),
        oldest_due_age_seconds=oldest_age,
        dead=int(by_state.get(DEAD, 0)),
        by_provider_dead={str(k): int(v) for k, v in dead_by_provider.items()},
    )
