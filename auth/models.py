"""The tables auth owns: registered clients, used assertion ids (replay store) and the audit log.

They share the gateway's SQLModel metadata, so one Alembic history creates them. Times are UTC
ISO-8601 text ending in `Z` (audit, clients) or epoch seconds (assertion expiry): the same bytes on
every backend, which the audit chain hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String
from sqlmodel import Field, SQLModel

_ID = BigInteger().with_variant(Integer, "sqlite")


class Client(SQLModel, table=True):
    """A machine client: who it is, which organisation it acts for, its scopes and its public keys."""

    __tablename__ = "client"

    client_id: str = Field(sa_column=Column(String(100), primary_key=True))
    role: str = Field(sa_column=Column(String(20), nullable=False))
    ods_code: str = Field(sa_column=Column(String(12), nullable=False))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Exactly one of the two: a key set registered from a file, or the URL the client publishes it at.
    jwks: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    jwks_url: str | None = Field(default=None, sa_column=Column(String(500), nullable=True))
    enabled: bool = Field(default=True, nullable=False)
    created_at: str = Field(sa_column=Column(String(32), nullable=False))
    updated_at: str = Field(sa_column=Column(String(32), nullable=False))


class UsedAssertion(SQLModel, table=True):
    """A client assertion's `jti`, kept until the assertion expires so it can never be replayed."""

    __tablename__ = "used_jti"
    __table_args__ = (Index("ix_used_jti_expires_at", "expires_at"),)

    client_id: str = Field(sa_column=Column(String(100), primary_key=True))
    jti: str = Field(sa_column=Column(String(255), primary_key=True))
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class AuditEvent(SQLModel, table=True):
    """One read or write: who, for which organisation, did what to which resource, and the outcome.

    Never patient data: ids, ODS codes and codes only. Rows are appended unsealed (`seq` null) in
    the transaction of the change they record; the sealer gives each its place in the hash chain.
    """

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_seq", "seq", unique=True),)

    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True, autoincrement=True))
    occurred_at: str = Field(sa_column=Column(String(32), nullable=False))
    request_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    client_id: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    user_id: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    role: str | None = Field(default=None, sa_column=Column(String(20), nullable=True))
    ods_code: str | None = Field(default=None, sa_column=Column(String(12), nullable=True))
    action: str = Field(sa_column=Column(String(32), nullable=False))
    resource_type: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    resource_id: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    outcome: str = Field(sa_column=Column(String(16), nullable=False))
    status: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    reason: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    # Coalesced refusals (migration 0010): how many alike, from which address, on which route.
    count: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    source: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    route: str | None = Field(default=None, sa_column=Column(String(120), nullable=True))
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    prev_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    row_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


def utc_text(moment: datetime) -> str:
    """A moment as the text auth stores: UTC, microseconds, `Z` (sorts as it reads)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
