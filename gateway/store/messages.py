"""Inbound messages: every accepted message's exact bytes and the answer it got (for idempotent replay)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from auth.identity import Caller
from gateway.store.db import Tx
from gateway.store.items import prescription_table, prescription_visible_to
from gateway.store.models import InboundMessage

message_table = InboundMessage.__table__  # type: ignore[attr-defined]
INSERT_MESSAGE = insert(message_table)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """An accepted message as stored: its exact bytes and the answer it got."""

    message_id: str
    tenant_ods: str
    bundle_identifier: str
    event: str
    body_sha256: str
    body: bytes
    response_status: int
    response_body: bytes
    response_location: str | None
    request_id: str
    received_at: datetime

    def values(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "tenant_ods": self.tenant_ods,
            "bundle_identifier": self.bundle_identifier,
            "event": self.event,
            "body_sha256": self.body_sha256,
            "body": self.body,
            "response_status": self.response_status,
            "response_body": self.response_body,
            "response_location": self.response_location,
            "request_id": self.request_id,
            "received_at": self.received_at,
        }


def insert_message(tx: Tx, message: NewMessage) -> None:
    """Store an accepted message; `AlreadyStored` when the trust's Bundle.identifier was taken."""
    tx.connection.execute(INSERT_MESSAGE, [message.values()])


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer given to an accepted message, replayed to an identical resubmission."""

    body_sha256: str
    status_code: int
    body: bytes
    location: str | None


def find_answer(tx: Tx, *, tenant_ods: str, bundle_identifier: str) -> StoredAnswer | None:
    row = tx.connection.execute(
        select(
            message_table.c.body_sha256,
            message_table.c.response_status.label("status_code"),
            message_table.c.response_body.label("body"),
            message_table.c.response_location.label("location"),
        ).where(
            message_table.c.tenant_ods == tenant_ods,
            message_table.c.bundle_identifier == bundle_identifier,
        )
    ).first()
    return None if row is None else StoredAnswer(**row._mapping)


def prescription_body(tx: Tx, message_id: str, *, caller: Caller) -> bytes | None:
    """The bytes of an accepted prescription message, if the caller may see its prescription."""
    row = tx.connection.execute(
        select(message_table.c.body)
        .join(prescription_table, prescription_table.c.message_id == message_table.c.id)
        .where(message_table.c.id == message_id, prescription_visible_to(caller))
    ).first()
    return None if row is None else bytes(row.body)
