"""Status messages providers sent through their adapters (an HL7 v2 message, a row of a status file),
kept as received. The unique de-duplication key makes each one applied once: storing a key seen
before raises `AlreadyStored`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select

from gateway.store.db import Tx
from gateway.store.models import ProviderMessage

provider_message_table = ProviderMessage.__table__  # type: ignore[attr-defined]
_INSERT = insert(provider_message_table)


@dataclass(frozen=True, slots=True)
class NewProviderMessage:
    message_id: str
    dedupe_key: str
    scheme: str
    provider_ods: str
    peer: str | None
    raw: bytes
    reports: int
    received_at: datetime


def insert_message(tx: Tx, message: NewProviderMessage) -> None:
    """Keep the message; `AlreadyStored` when its de-duplication key was stored before."""
    tx.connection.execute(
        _INSERT,
        [
            {
                "id": message.message_id,
                "dedupe_key": message.dedupe_key,
                "scheme": message.scheme,
                "provider_ods": message.provider_ods,
                "peer": message.peer,
                "raw": message.raw,
                "reports": message.reports,
                "received_at": message.received_at,
            }
        ],
    )


def is_stored(tx: Tx, dedupe_key: str) -> bool:
    row = tx.connection.execute(
        select(provider_message_table.c.id).where(provider_message_table.c.dedupe_key == dedupe_key)
    ).first()
    return row is not None
