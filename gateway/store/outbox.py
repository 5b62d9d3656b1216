"""The transactional outbox: messages waiting to go out, written in the transaction of the change
they carry; claims (leases) on due messages; releasing a claim with its outcome; figures.

Claims are leases: a worker that dies mid-send leaves its rows in `sending` until `lease_until`,
then any worker claims them again (the receiver may see a message twice, never zero times; the
idempotency key lets it notice). On PostgreSQL claims use `FOR UPDATE SKIP LOCKED`, so workers on
any number of machines never claim the same row at once; on SQLite the claim runs under the single
write lock, which gives the same guarantee. A message is only claimable when no earlier message with
the same ordering key is still pending or sending: a provider message's key is its prescription, so a
cancel never overtakes its order; a notification's is its subscription (`sub:<id>`), so a subscriber
gets its notifications in order and they never wait behind sends to providers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased

from gateway.store.db import Database, Tx
from gateway.store.models import InboundMessage, OutboxMessage, Prescription, Subscription

outbox_table = OutboxMessage.__table__  # type: ignore[attr-defined]
_prescription = Prescription.__table__  # type: ignore[attr-defined]
_message = InboundMessage.__table__  # type: ignore[attr-defined]
_subscription = Subscription.__table__  # type: ignore[attr-defined]
_is_provider_message = outbox_table.c.subscription_id.is_(None)
INSERT_OUTBOX = insert(outbox_table)

NOTIFICATION_KEY_PREFIX = "notification-"


class State(StrEnum):
    """`pending` (due at `due_at`), `sending` (leased), `done` (the receiver answered for it), `dead`
    (retries exhausted: a provider message can be re-driven), `cancelled` (withdrawn before it went),
    `held` (nothing to send: the provider pulls it; `held_at` says since when, and a provider's poller
    leases it with `lease_owner`/`lease_until` while it fetches it)."""

    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"
    HELD = "held"


class Kind(StrEnum):
    ORDER = "new"
    CANCEL = "cancel"
    NOTIFICATION = "notification"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One outbox row as written; built by `order`, `cancellation` and `notification` only."""

    prescription_id: str
    kind: Kind
    provider_ods: str
    idempotency_key: str
    ordering_key: str
    due_at: datetime
    message_id: str | None = None
    subscription_id: str | None = None
    payload: bytes | None = None

    def values(self) -> dict[str, Any]:
        return {
            "prescription_id": self.prescription_id,
            "kind": self.kind.value,
            "provider_ods": self.provider_ods,
            "idempotency_key": self.idempotency_key,
            "ordering_key": self.ordering_key,
            "message_id": self.message_id,
            "subscription_id": self.subscription_id,
            "payload": self.payload,
            "state": State.PENDING.value,
            "attempts": 0,
            "due_at": self.due_at,
            "created_at": self.due_at,
            "updated_at": self.due_at,
        }


def order(*, prescription_id: str, provider_ods: str, now: datetime) -> NewMessage:
    """The prescription's order for its provider."""
    return NewMessage(
        prescription_id, Kind.ORDER, provider_ods, f"order-{prescription_id}", prescription_id, now
    )


def cancellation(*, prescription_id: str, provider_ods: str, message_id: str, now: datetime) -> NewMessage:
    """The trust's cancel message (stored as `message_id`), after the order it cancels."""
    return NewMessage(
        prescription_id,
        Kind.CANCEL,
        provider_ods,
        f"cancel-{message_id}",
        prescription_id,
        now,
        message_id=message_id,
    )


def notification(
    *, prescription_id: str, provider_ods: str, subscription_id: str, payload: bytes | None, now: datetime
) -> NewMessage:
    """A notification to a subscriber, carrying the resource as it was when the change was made."""
    return NewMessage(
        prescription_id,
        Kind.NOTIFICATION,
        provider_ods,
        f"{NOTIFICATION_KEY_PREFIX}{uuid.uuid4()}",
        f"sub:{subscription_id}",
        now,
        subscription_id=subscription_id,
        payload=payload,
    )


def enqueue(tx: Tx, messages: Sequence[NewMessage]) -> None:
    if messages:
        tx.connection.execute(INSERT_OUTBOX, [message.values() for message in messages])


def order_state(tx: Tx, prescription_id: str, *, for_change: bool = False) -> State | None:
    """Where the prescription's order is; `for_change` locks it (a dispatcher's claim then skips it,
    and a claim not yet committed is waited for), so a decision on it cannot race a send."""
    query = select(outbox_table.c.state).where(
        outbox_table.c.prescription_id == prescription_id, outbox_table.c.kind == Kind.ORDER.value
    )
    if for_change and tx.locks_rows:
        query = query.with_for_update()
    state = tx.connection.execute(query).scalar_one_or_none()
    return None if state is None else State(state)


def withdraw_order(tx: Tx, prescription_id: str, *, now: datetime) -> None:
    """The prescription's order is not to be sent, or no longer to be pulled (cancelled or expired
    before the provider had it)."""
    tx.connection.execute(
        update(outbox_table)
        .where(
            outbox_table.c.prescription_id == prescription_id,
            outbox_table.c.kind == Kind.ORDER.value,
            outbox_table.c.state.in_((State.PENDING.value, State.DEAD.value, State.HELD.value)),
        )
        .values(state=State.CANCELLED.value, lease_owner=None, lease_until=None, updated_at=now)
    )


def kill_pending_notifications(tx: Tx, subscription_id: str, *, now: datetime, reason: str) -> int:
    """Queued notifications that will never be sent (the subscription is off or in error): dead."""
    # A notification being sent at this moment keeps its lease; its result is recorded as usual.
    changed = tx.connection.execute(
        update(outbox_table)
        .where(
            outbox_table.c.subscription_id == subscription_id,
            outbox_table.c.state == State.PENDING.value,
        )
        .values(state=State.DEAD.value, last_error=reason[:500], updated_at=now)
    )
    return int(changed.rowcount)


# --- Claims -------------------------------------------------------------------------------------

OrderKind = Literal["new", "cancel"]


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A claimed message for a provider, with what its adapter needs to send it."""

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


Claimed = ClaimedMessage | ClaimedNotification


def claim_due(
    db: Database,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    skip_providers: frozenset[str] = frozenset(),
    notifications: bool = True,
) -> list[Claimed]:
    """Lease up to `limit` due messages to `owner`, oldest due first; expired leases count as due.

    `skip_providers` holds back messages to those providers (not notifications about their
    prescriptions); `notifications=False` leaves notifications to dispatchers that can sign them.

    Whether anything is due is read first, in a read-only transaction: a poll that finds nothing
    (the usual case, and the costly one while a provider's backlog is held back) takes no write
    lock, so it never holds up intake's writers, in this process or another. What it finds is
    claimed in a write transaction that looks again (another dispatcher may have come first).
    """
    with db.snapshot() as tx:
        if not _due_ids(
            tx, now=now, limit=1, skip_providers=skip_providers, notifications=notifications, any_one=True
        ):
            return []
    with db.transaction() as tx:
        ids = _due_ids(tx, now=now, limit=limit, skip_providers=skip_providers, notifications=notifications)
        if not ids:
            return []
        tx.connection.execute(
            update(outbox_table)
            .where(outbox_table.c.id.in_(ids))
            .values(state=State.SENDING.value, lease_owner=owner, lease_until=now + lease, updated_at=now)
        )
        claimed: list[Claimed] = [*_provider_messages(tx, ids), *_notifications(tx, ids)]
    return sorted(claimed, key=lambda message: message.outbox_id)


def _due_ids(
    tx: Tx,
    *,
    now: datetime,
    limit: int,
    skip_providers: frozenset[str],
    notifications: bool,
    any_one: bool = False,
) -> list[int]:
    """The first `limit` due messages by (due_at, id), read lane by lane, each lane in the order of an
    index, so a poll reads about `limit` rows a lane whatever the backlog: expired leases (few), then
    either every pending message (`ix_outbox_due`) or, while providers are held back, each provider's
    pending messages of each kind (`ix_outbox_lane`), never reading the held-back providers' own
    messages. The lanes' heads, merged, are the rows one query over the whole table would pick. On
    PostgreSQL each lane locks what it reads (`SKIP LOCKED`), so dispatchers on other machines take
    the next rows instead of waiting. `any_one`: whether anything is due at all; the first lane that
    has a row answers."""
    held_back = bool(skip_providers)
    filtered = (held_back, notifications, tx.locks_rows)
    parameters: dict[str, Any] = {"now": now, "limit": limit, "held_back": sorted(skip_providers)}
    lanes: list[tuple[Select[tuple[int, datetime]], dict[str, Any]]] = [
        (_as_polled(_EXPIRED, *filtered), parameters)
    ]
    if not held_back:
        lanes.append((_as_polled(_PENDING, *filtered), parameters))
    else:
        # A provider's lane of one kind is only read when its rows may be claimed: no filter needed.
        one_kind = _as_polled(_PENDING_IN_LANE, False, True, tx.locks_rows)
        lanes.extend(
            (one_kind, {**parameters, "provider_ods": provider_ods, "kind": kind.value})
            for provider_ods in tx.connection.scalars(_PENDING_PROVIDERS)
            for kind in Kind
            if (kind is Kind.NOTIFICATION and notifications)
            or (kind is not Kind.NOTIFICATION and provider_ods not in skip_providers)
        )
    heads: list[tuple[datetime, int]] = []
    for lane, values in lanes:
        heads.extend((row.due_at, row.id) for row in tx.connection.execute(lane, values))
        if heads and any_one:
            break
    return [outbox_id for _, outbox_id in sorted(heads)[:limit]]


def _lane(state: State) -> Select[tuple[int, datetime]]:
    """Messages in `state` that no earlier message with their ordering key waits for, in (due_at, id)
    order, at most `:limit`."""
    earlier = aliased(outbox_table)
    blocked_by_earlier = exists().where(
        and_(
            earlier.c.ordering_key == outbox_table.c.ordering_key,
            earlier.c.id < outbox_table.c.id,
            earlier.c.state.in_((State.PENDING.value, State.SENDING.value)),
        )
    )
    return (
        select(outbox_table.c.id, outbox_table.c.due_at)
        .where(outbox_table.c.state == state.value, ~blocked_by_earlier)
        .order_by(outbox_table.c.due_at, outbox_table.c.id)
        .limit(bindparam("limit", type_=Integer))
    )


# The lanes' statements, built once (a poll runs several, several times a second).
_EXPIRED = _lane(State.SENDING).where(outbox_table.c.lease_until < bindparam("now"))
_PENDING = _lane(State.PENDING).where(outbox_table.c.due_at <= bindparam("now"))
_PENDING_IN_LANE = _PENDING.where(
    outbox_table.c.provider_ods == bindparam("provider_ods"), outbox_table.c.kind == bindparam("kind")
)


def _pending_providers() -> Select[Any]:
    """The providers with pending messages, one index seek each (a loose scan of `ix_outbox_lane`)."""
    found = (
        select(func.min(outbox_table.c.provider_ods).label("ods"))
        .where(outbox_table.c.state == State.PENDING.value)
        .cte("pending_provider", recursive=True)
    )
    later = aliased(outbox_table)
    following = (
        select(func.min(later.c.provider_ods))
        .where(later.c.state == State.PENDING.value, later.c.provider_ods > found.c.ods)
        .scalar_subquery()
    )
    found = found.union_all(select(following).where(found.c.ods.is_not(None)))
    return select(found.c.ods).where(found.c.ods.is_not(None))


_PENDING_PROVIDERS = _pending_providers()


@cache
def _as_polled(
    lane: Select[tuple[int, datetime]], held_back: bool, notifications: bool, locks_rows: bool
) -> Select[tuple[int, datetime]]:
    """`lane` as a poll runs it: without held-back providers' messages, without notifications where
    this dispatcher cannot sign them, locking its rows on PostgreSQL."""
    if held_back:
        held = outbox_table.c.provider_ods.in_(bindparam("held_back", expanding=True))
        lane = lane.where(or_(~_is_provider_message, ~held))
    if not notifications:
        lane = lane.where(_is_provider_message)
    if locks_rows:
        lane = lane.with_for_update(skip_locked=True, of=outbox_table)
    return lane


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(outbox_table.c.state == State.PENDING.value, outbox_table.c.due_at <= now),
        and_(outbox_table.c.state == State.SENDING.value, outbox_table.c.lease_until < now),
    )


def _provider_messages(tx: Tx, ids: list[int]) -> list[ClaimedMessage]:
    rows = tx.connection.execute(
        select(
            outbox_table.c.id.label("outbox_id"),
            outbox_table.c.prescription_id,
            outbox_table.c.kind,
            outbox_table.c.provider_ods,
            outbox_table.c.idempotency_key,
            outbox_table.c.attempts,
            _prescription.c.short_form_id,
            _prescription.c.tenant_ods,
            _message.c.body,
            _message.c.request_id,
        )
        .join(_prescription, _prescription.c.id == outbox_table.c.prescription_id)
        .join(_message, _message.c.id == func.coalesce(outbox_table.c.message_id, _prescription.c.message_id))
        .where(outbox_table.c.id.in_(ids), _is_provider_message)
        .order_by(outbox_table.c.id)
    )
    return [ClaimedMessage(**row._mapping) for row in rows]


def _notifications(tx: Tx, ids: list[int]) -> list[ClaimedNotification]:
    rows = tx.connection.execute(
        select(
            outbox_table.c.id.label("outbox_id"),
            outbox_table.c.subscription_id,
            outbox_table.c.prescription_id,
            outbox_table.c.idempotency_key,
            outbox_table.c.attempts,
            outbox_table.c.payload,
            _subscription.c.endpoint,
            _subscription.c.headers,
            _subscription.c.status.label("subscription_status"),
        )
        .join(_subscription, _subscription.c.id == outbox_table.c.subscription_id)
        .where(outbox_table.c.id.in_(ids))
        .order_by(outbox_table.c.id)
    )
    return [ClaimedNotification(**{**row._mapping, "headers": tuple(row.headers or ())}) for row in rows]


def release_claim(tx: Tx, owner: str, outbox_id: int, *, now: datetime, **values: Any) -> bool:
    """End `owner`'s lease on a claimed row, setting `values` (its new state...); False when the lease
    was lost meanwhile (another worker has the row now) and nothing was changed."""
    changed = tx.connection.execute(
        update(outbox_table)
        .where(
            outbox_table.c.id == outbox_id,
            outbox_table.c.state == State.SENDING.value,
            outbox_table.c.lease_owner == owner,
        )
        .values(lease_owner=None, lease_until=None, updated_at=now, **values)
    )
    return bool(changed.rowcount)


def mark_done(tx: Tx, owner: str, outbox_id: int, *, now: datetime, note: str | None = None) -> bool:
    """The receiver answered for the message (took it, or refused it for good: `note` says why)."""
    return release_claim(tx, owner, outbox_id, now=now, state=State.DONE.value, last_error=note)


def mark_held(tx: Tx, owner: str, outbox_id: int, *, now: datetime) -> bool:
    """Nothing was sent: the provider pulls the message itself. Neither retried nor dead; `held_at`
    says since when it waits."""
    return release_claim(tx, owner, outbox_id, now=now, state=State.HELD.value, held_at=now, last_error=None)


def mark_failed(
    tx: Tx, owner: str, outbox_id: int, *, attempts: int, error: str, retry_at: datetime | None, now: datetime
) -> bool:
    """A failed attempt: due again at `retry_at`, or dead when it is None."""
    values: dict[str, Any] = {"attempts": attempts, "last_error": error[:500]}
    if retry_at is None:
        values["state"] = State.DEAD.value
    else:
        values.update(state=State.PENDING.value, due_at=retry_at)
    return release_claim(tx, owner, outbox_id, now=now, **values)


# --- Re-driving dead messages and the figures ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadMessage:
    outbox_id: int
    prescription_id: str
    kind: str


def requeue_dead(
    tx: Tx, *, now: datetime, prescription_id: str | None = None, provider_ods: str | None = None
) -> list[DeadMessage]:
    """Dead messages to providers put back in the queue, due now (notifications stay dead)."""
    conditions = [outbox_table.c.state == State.DEAD.value, _is_provider_message]
    if prescription_id is not None:
        conditions.append(outbox_table.c.prescription_id == prescription_id)
    if provider_ods is not None:
        conditions.append(outbox_table.c.provider_ods == provider_ods)
    rows = tx.connection.execute(
        select(
            outbox_table.c.id.label("outbox_id"), outbox_table.c.prescription_id, outbox_table.c.kind
        ).where(*conditions)
    )
    dead = [DeadMessage(**row._mapping) for row in rows]
    if dead:
        tx.connection.execute(
            update(outbox_table)
            .where(outbox_table.c.id.in_([message.outbox_id for message in dead]))
            .values(
                state=State.PENDING.value,
                attempts=0,
                due_at=now,
                last_error=None,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
        )
    return dead


# --- Orders held for providers that pull them ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldOrder:
    """An order waiting for its provider to pull it: the prescription, and the message it pulls."""

    outbox_id: int
    prescription_id: str
    message_id: str
    held_at: datetime


def _held_orders(provider_ods: str) -> Any:
    return (
        select(
            outbox_table.c.id.label("outbox_id"),
            outbox_table.c.prescription_id,
            _prescription.c.message_id,
            outbox_table.c.held_at,
        )
        .join(_prescription, _prescription.c.id == outbox_table.c.prescription_id)
        .where(
            outbox_table.c.provider_ods == provider_ods,
            outbox_table.c.kind == Kind.ORDER.value,
            outbox_table.c.state == State.HELD.value,
        )
        .order_by(outbox_table.c.held_at, outbox_table.c.id)
    )


def unleased_held_orders(tx: Tx, *, provider_ods: str, now: datetime, limit: int) -> list[HeldOrder]:
    """Up to `limit` of the provider's held orders no poller holds a lease on, oldest held first;
    locked for the lease (another poller's transaction skips them: `SKIP LOCKED`)."""
    query = (
        _held_orders(provider_ods)
        .where(or_(outbox_table.c.lease_until.is_(None), outbox_table.c.lease_until <= now))
        .limit(limit)
    )
    if tx.locks_rows:
        query = query.with_for_update(skip_locked=True, of=outbox_table)
    return [HeldOrder(**row._mapping) for row in tx.connection.execute(query)]


def lease_held_orders(
    tx: Tx, outbox_ids: Sequence[int], *, holder: str, until: datetime, now: datetime
) -> None:
    """The held orders are `holder`'s until `until`: no other poller is offered them before."""
    if outbox_ids:
        tx.connection.execute(
            update(outbox_table)
            .where(outbox_table.c.id.in_(list(outbox_ids)), outbox_table.c.state == State.HELD.value)
            .values(lease_owner=holder[:80], lease_until=until, updated_at=now)
        )


def held_too_long(tx: Tx, *, provider_ods: str, held_before: datetime, limit: int) -> list[HeldOrder]:
    """The provider's orders held since before `held_before` (nobody acknowledged them), locked."""
    query = _held_orders(provider_ods).where(outbox_table.c.held_at < held_before).limit(limit)
    if tx.locks_rows:
        query = query.with_for_update(skip_locked=True, of=outbox_table)
    return [HeldOrder(**row._mapping) for row in tx.connection.execute(query)]


def mark_unpulled(tx: Tx, outbox_id: int, *, error: str, now: datetime) -> bool:
    """A held order nobody pulled in time is dead, like one whose sends failed: an operator re-drives it."""
    changed = tx.connection.execute(
        update(outbox_table)
        .where(outbox_table.c.id == outbox_id, outbox_table.c.state == State.HELD.value)
        .values(
            state=State.DEAD.value, last_error=error[:500], lease_owner=None, lease_until=None, updated_at=now
        )
    )
    return bool(changed.rowcount)


def finish_pulled_order(tx: Tx, prescription_id: str, *, now: datetime) -> bool:
    """The provider acknowledged the order it pulled: its row is done and its lease released. False when
    the prescription has no such row (the order was pushed, or is done already)."""
    changed = tx.connection.execute(
        update(outbox_table)
        .where(
            outbox_table.c.prescription_id == prescription_id,
            outbox_table.c.kind == Kind.ORDER.value,
            outbox_table.c.held_at.is_not(None),
            # Dead: pulled after the alert; pending or sending: pulled while it was being re-driven.
            outbox_table.c.state.in_(
                (State.HELD.value, State.DEAD.value, State.PENDING.value, State.SENDING.value)
            ),
        )
        .values(state=State.DONE.value, lease_owner=None, lease_until=None, last_error=None, updated_at=now)
    )
    return bool(changed.rowcount)


def finish_held_cancellations(tx: Tx, prescription_id: str, *, now: datetime) -> None:
    """The provider answered the cancellations it pulled: their held rows are done."""
    tx.connection.execute(
        update(outbox_table)
        .where(
            outbox_table.c.prescription_id == prescription_id,
            outbox_table.c.kind == Kind.CANCEL.value,
            outbox_table.c.state == State.HELD.value,
        )
        .values(state=State.DONE.value, updated_at=now)
    )


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    due: int
    oldest_due_age_seconds: float
    dead: int
    by_provider_dead: dict[str, int]
    held: int = 0
    """Messages waiting for their provider to pull them."""


def stats(db: Database, *, now: datetime) -> OutboxStats:
    with db.snapshot() as tx:
        connection = tx.connection
        by_state = {
            row.state: int(row.total)
            for row in connection.execute(
                select(outbox_table.c.state, func.count().label("total")).group_by(outbox_table.c.state)
            )
        }
        due = connection.execute(
            select(func.count().label("total"), func.min(outbox_table.c.due_at).label("oldest")).where(
                _due(now)
            )
        ).one()
        dead_by_provider = {
            str(row.provider_ods): int(row.total)
            for row in connection.execute(
                select(outbox_table.c.provider_ods, func.count().label("total"))
                .where(outbox_table.c.state == State.DEAD.value, _is_provider_message)
                .group_by(outbox_table.c.provider_ods)
            )
        }
    return OutboxStats(
        depth=by_state.get(State.PENDING.value, 0) + by_state.get(State.SENDING.value, 0),
        due=int(due.total),
        oldest_due_age_seconds=_age(due.oldest, now),
        dead=by_state.get(State.DEAD.value, 0),
        by_provider_dead=dead_by_provider,
        held=by_state.get(State.HELD.value, 0),
    )


def _age(oldest: datetime | None, now: datetime) -> float:
    # `min()` of a UTCDateTime column comes back through the column's type: aware, on every backend.
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
