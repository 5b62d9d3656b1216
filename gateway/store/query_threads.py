"""Query threads: the messages a provider and a trust exchange about one line item."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select

from gateway.store.db import Tx
from gateway.store.models import QueryMessage

query_table = QueryMessage.__table__  # type: ignore[attr-defined]
_INSERT = insert(query_table)


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    message_id: str
    prescription_id: str
    item_id: str
    author_role: str
    author_ods: str
    text: str
    sent_at: datetime
    request_id: str


def add_message(tx: Tx, message: ThreadMessage) -> None:
    tx.connection.execute(
        _INSERT,
        [
            {
                "id": message.message_id,
                "prescription_id": message.prescription_id,
                "item_id": message.item_id,
                "author_role": message.author_role,
                "author_ods": message.author_ods,
                "text": message.text,
                "sent_at": message.sent_at,
                "request_id": message.request_id,
            }
        ],
    )


def thread_of_item(tx: Tx, item_id: str) -> list[ThreadMessage]:
    """Every message about the item, oldest first."""
    rows = tx.connection.execute(
        select(
            query_table.c.id.label("message_id"),
            query_table.c.prescription_id,
            query_table.c.item_id,
            query_table.c.author_role,
            query_table.c.author_ods,
            query_table.c.text,
            query_table.c.sent_at,
            query_table.c.request_id,
        )
        .where(query_table.c.item_id == item_id)
        .order_by(query_table.c.sent_at, query_table.c.id)
    )
    return [ThreadMessage(**row._mapping) for row in rows]
