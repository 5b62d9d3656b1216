"""Reading and writing subscriptions, always within one trust (the tenant column is in every query)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update
from sqlmodel import Session, col

from gateway.store.models import Subscription

ACTIVE, ERROR, OFF = "active", "error", "off"

_subscription = Subscription.__table__  # type: ignore[attr-defined]


def insert_subscription(connection: Connection, values: dict[str, Any]) -> None:
    connection.execute(insert(_subscription), [values])


def get_subscription(session: Session, subscription_id: str, *, tenant_ods: str) -> Subscription | None:
    found = session.execute(
        select(Subscription).where(
            col(Subscription.id) == subscription_id, col(Subscription.tenant_ods) == tenant_ods
        )
    ).scalar_one_or_none()
    return found


def list_subscriptions(session: Session, *, tenant_ods: str) -> Sequence[Subscription]:
    return (
        session.execute(
            select(Subscription)
            .where(col(Subscription.tenant_ods) == tenant_ods)
            .order_by(col(Subscription.created_at), col(Subscription.id))
        )
        .scalars()
        .all()
    )


def active_subscriptions(
    connection: Connection, *, tenant_ods: str, now: datetime
) -> list[tuple[str, str, str | None]]:
    """(id, criteria, payload mime type) of the trust's active, unexpired subscriptions."""
    rows = connection.execute(
        select(_subscription.c.id, _subscription.c.criteria, _subscription.c.payload)
        .where(
            _subscription.c.tenant_ods == tenant_ods,
            _subscription.c.status == ACTIVE,
            or_(_subscription.c.end_at.is_(None), _subscription.c.end_at > now),
        )
        .order_by(_subscription.c.id)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def switch_off(connection: Connection, subscription_id: str, *, tenant_ods: str, now: datetime) -> bool:
    """Turn a subscription off (again: no change); False if the trust has no such subscription."""
    status = connection.execute(
        select(_subscription.c.status).where(
            _subscription.c.id == subscription_id, _subscription.c.tenant_ods == tenant_ods
        )
    ).scalar_one_or_none()
    if status is None:
        return False
    if status != OFF:
        connection.execute(
            update(_subscription)
            .where(_subscription.c.id == subscription_id)
            .values(status=OFF, updated_at=now)
        )
    return True
