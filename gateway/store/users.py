"""Clinician accounts: the people who sign in to the web pages, one trust each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.store.db import Tx
from gateway.store.models import ClinicianUser

_user = ClinicianUser.__table__  # type: ignore[attr-defined]


class UserExists(Exception):  # noqa: N818  (a store refusal, named for what it is)
    pass


class UserNotFound(Exception):  # noqa: N818
    pass


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    username: str
    display_name: str
    ods_code: str
    password_hash: str | None
    oidc_issuer: str | None
    oidc_subject: str | None
    enabled: bool
    failed_attempts: int
    locked_until: datetime | None
    last_sign_in_at: datetime | None
    created_at: datetime


_COLUMNS = (
    _user.c.id,
    _user.c.username,
    _user.c.display_name,
    _user.c.ods_code,
    _user.c.password_hash,
    _user.c.oidc_issuer,
    _user.c.oidc_subject,
    _user.c.enabled,
    _user.c.failed_attempts,
    _user.c.locked_until,
    _user.c.last_sign_in_at,
    _user.c.created_at,
)


def _record(row: Any) -> UserRecord:
    values = row._mapping
    return UserRecord(**{column.name: values[column.name] for column in _COLUMNS})


def insert_user(tx: Tx, user: UserRecord, *, now: datetime) -> None:
    """Add an account; `UserExists` when the username (or the OIDC identity) is taken."""
    values = {column.name: getattr(user, column.name) for column in _COLUMNS}
    try:
        tx.connection.execute(insert(_user), [{**values, "updated_at": now}])
    except IntegrityError as exc:
        raise UserExists(user.username) from exc


def _one(tx: Tx, condition: Any) -> UserRecord | None:
    row = tx.connection.execute(select(*_COLUMNS).where(condition)).first()
    return _record(row) if row else None


def find_by_username(tx: Tx, username: str) -> UserRecord | None:
    return _one(tx, _user.c.username == username)


def find_by_id(tx: Tx, user_id: str) -> UserRecord | None:
    return _one(tx, _user.c.id == user_id)


def find_by_oidc(tx: Tx, *, issuer: str, subject: str) -> UserRecord | None:
    return _one(tx, (_user.c.oidc_issuer == issuer) & (_user.c.oidc_subject == subject))


def list_users(tx: Tx, *, ods_code: str | None = None) -> list[UserRecord]:
    query = select(*_COLUMNS).order_by(_user.c.ods_code, _user.c.username)
    if ods_code is not None:
        query = query.where(_user.c.ods_code == ods_code)
    return [_record(row) for row in tx.connection.execute(query)]


def _change(tx: Tx, condition: Any, values: dict[str, Any], *, now: datetime) -> None:
    changed = tx.connection.execute(update(_user).where(condition).values(**values, updated_at=now))
    if changed.rowcount == 0:
        raise UserNotFound(str(condition))


def set_enabled(tx: Tx, username: str, *, enabled: bool, now: datetime) -> None:
    _change(tx, _user.c.username == username, {"enabled": enabled}, now=now)


def set_password(tx: Tx, username: str, *, password_hash: str, now: datetime) -> None:
    """A new password also clears the failure count and any lock."""
    _change(
        tx,
        _user.c.username == username,
        {"password_hash": password_hash, "failed_attempts": 0, "locked_until": None},
        now=now,
    )


def record_failed_sign_in(
    tx: Tx,
    user_id: str,
    *,
    failed_attempts: int,
    locked_until: datetime | None,
    now: datetime,
) -> None:
    _change(
        tx,
        _user.c.id == user_id,
        {"failed_attempts": failed_attempts, "locked_until": locked_until},
        now=now,
    )


def record_sign_in(tx: Tx, user_id: str, *, now: datetime) -> None:
    _change(
        tx,
        _user.c.id == user_id,
        {"failed_attempts": 0, "locked_until": None, "last_sign_in_at": now},
        now=now,
    )


def update_profile(tx: Tx, user_id: str, *, display_name: str, ods_code: str, now: datetime) -> None:
    """What the identity provider says of the person now (their trust may change)."""
    _change(tx, _user.c.id == user_id, {"display_name": display_name, "ods_code": ods_code}, now=now)
