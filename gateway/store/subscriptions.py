"""Subscriptions, always within one trust (the tenant column is in every query a trust makes), and
their delivery record (failures in a row, the error that stopped them)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, func, insert, or_, select, update

from gateway.store.db import Tx
from gateway.store.models import Subscription

subscription_table = Subscription.__table__  # type: ignore[attr-defined]


class SubscriptionStatus(StrEnum):
    """`requested` is never stored: a new subscription is checked and made `active` at once."""

    ACTIVE = "active"
    ERROR = "error"
    OFF = "off"


ACTIVE, ERROR, OFF = (
    SubscriptionStatus.ACTIVE.value,
    SubscriptionStatus.ERROR.value,
    SubscriptionStatus.OFF.value,
)


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """A trust's rest-hook subscription. `headers` are what the subscriber asked to receive (an
    Authorization header, say): stored, sent, never logged or shown again."""

    id: str
    tenant_ods: str
    client_id: str
    criteria: str
    endpoint: str
    payload: str | None
    headers: list[str]
    status: str
    error: str | None
    failure_count: int
    reason: str
    end_at: datetime | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = [subscription_table.c[field.name] for field in fields(StoredSubscription)]


def _select() -> Select[Any]:
    return select(*_COLUMNS)


def insert_subscription(tx: Tx, subscription: StoredSubscription) -> None:
    tx.connection.execute(
        insert(subscription_table),
        [{field.name: getattr(subscription, field.name) for field in fields(StoredSubscription)}],
    )


def count_held(tx: Tx, *, tenant_ods: str) -> int:
    """The trust's subscriptions not turned off (active or in error): what the cap counts."""
    return int(
        tx.connection.execute(
            select(func.count())
            .select_from(subscription_table)
            .where(subscription_table.c.tenant_ods == tenant_ods, subscription_table.c.status != OFF)
        ).scalar_one()
    )


def get_subscription(tx: Tx, subscription_id: str, *, tenant_ods: str) -> StoredSubscription | None:
    row = tx.connection.execute(
        _select().where(
            subscription_table.c.id == subscription_id, subscription_table.c.tenant_ods == tenant_ods
        )
    ).first()
    return None if row is None else StoredSubscription(**row._mapping)


def list_subscriptions(tx: Tx, *, tenant_ods: str) -> list[StoredSubscription]:
    rows = tx.connection.execute(
        _select()
        .where(subscription_table.c.tenant_ods == tenant_ods)
        .order_by(subscription_table.c.created_at, subscription_table.c.id)
    )
    return [StoredSubscription(**row._mapping) for row in rows]


@dataclass(frozen=True, slots=True)
class ActiveSubscription:
    subscription_id: str
    criteria: str
    payload: str | None


def active_subscriptions(tx: Tx, *, tenant_ods: str, now: datetime) -> list[ActiveSubscription]:
    """The trust's active, unexpired subscriptions."""
    rows = tx.connection.execute(
        select(
            subscription_table.c.id.label("subscription_id"),
            subscription_table.c.criteria,
            subscription_table.c.payload,
        )
        .where(
            subscription_table.c.tenant_ods == tenant_ods,
            subscription_table.c.status == ACTIVE,
            or_(subscription_table.c.end_at.is_(None), subscription_table.c.end_at > now),
        )
        .order_by(subscription_table.c.id)
    )
    return [ActiveSubscription(**row._mapping) for row in rows]


def switch_off(tx: Tx, subscription_id: str, *, tenant_ods: str, now: datetime) -> bool:
    """Turn a subscription off (again: no change); False if the trust has no such subscription."""
    status = tx.connection.execute(
        select(subscription_table.c.status).where(
            subscription_table.c.id == subscription_id, subscription_table.c.tenant_ods == tenant_ods
        )
    ).scalar_one_or_none()
    if status is None:
        return False
    if status != OFF:
        tx.connection.execute(
            update(subscription_table)
            .where(subscription_table.c.id == subscription_id)
            .values(status=OFF, updated_at=now)
        )
    return True


def reset_failures(tx: Tx, subscription_id: str) -> None:
    """A delivery went through: the count of failures in a row starts again."""
    tx.connection.execute(
        update(subscription_table)
        .where(subscription_table.c.id == subscription_id, subscription_table.c.failure_count != 0)
        .values(failure_count=0)
    )


def failures_in_a_row(tx: Tx, subscription_id: str) -> int:
    return int(
        tx.connection.execute(
            select(subscription_table.c.failure_count).where(subscription_table.c.id == subscription_id)
        ).scalar_one()
    )


def record_failures(tx: Tx, subscription_id: str, *, failures: int, error: str | None, now: datetime) -> None:
    """Count a failed delivery; with `error`, the subscription (if still active) goes into error."""
    values: dict[str, object] = {"failure_count": failures}
    if error is not None:
        values.update(status=ERROR, error=error[:500], updated_at=now)
    tx.connection.execute(
        update(subscription_table)
        .where(subscription_table.c.id == subscription_id, subscription_table.c.status == ACTIVE)
        .values(**values)
    )
