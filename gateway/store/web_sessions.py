"""Server-side sessions of the clinician pages, keyed by the SHA-256 of the cookie's token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update

from gateway.store.db import Tx
from gateway.store.models import WebSession

_session = WebSession.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    token_hash: str
    user_id: str | None
    csrf_token: str
    pending: dict[str, Any] | None
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


_COLUMNS = (
    _session.c.token_hash,
    _session.c.user_id,
    _session.c.csrf_token,
    _session.c.pending,
    _session.c.created_at,
    _session.c.last_seen_at,
    _session.c.expires_at,
)


def insert_session(tx: Tx, record: SessionRecord) -> None:
    tx.connection.execute(
        insert(_session), [{column.name: getattr(record, column.name) for column in _COLUMNS}]
    )


def find_session(tx: Tx, token_hash: str) -> SessionRecord | None:
    row = tx.connection.execute(select(*_COLUMNS).where(_session.c.token_hash == token_hash)).first()
    if row is None:
        return None
    values = row._mapping
    return SessionRecord(**{column.name: values[column.name] for column in _COLUMNS})


def touch_session(tx: Tx, token_hash: str, *, now: datetime) -> None:
    tx.connection.execute(
        update(_session).where(_session.c.token_hash == token_hash).values(last_seen_at=now)
    )


def set_pending(tx: Tx, token_hash: str, pending: dict[str, Any] | None) -> None:
    tx.connection.execute(update(_session).where(_session.c.token_hash == token_hash).values(pending=pending))


def delete_session(tx: Tx, token_hash: str) -> None:
    tx.connection.execute(delete(_session).where(_session.c.token_hash == token_hash))


def delete_user_sessions(tx: Tx, user_id: str) -> int:
    return int(tx.connection.execute(delete(_session).where(_session.c.user_id == user_id)).rowcount)


def delete_stale_sessions(tx: Tx, *, now: datetime, idle_before: datetime) -> int:
    """Sessions past their absolute end or idle since before `idle_before`."""
    stale = or_(_session.c.expires_at <= now, _session.c.last_seen_at < idle_before)
    return int(tx.connection.execute(delete(_session).where(stale)).rowcount)
