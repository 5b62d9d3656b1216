"""MedicationDispenses: sent by providers in dispense-notifications (kept as sent), or built from what a
provider reported through its adapter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, select

from auth.identity import Caller
from gateway.store.db import Tx
from gateway.store.items import item_table, visible_to
from gateway.store.models import MedicationDispenseRecord

dispense_table = MedicationDispenseRecord.__table__  # type: ignore[attr-defined]
_INSERT = insert(dispense_table)


@dataclass(frozen=True, slots=True)
class Dispense:
    dispense_id: str
    prescription_id: str
    item_id: str
    message_id: str | None
    """The dispense-notification it came in (None when it came through an adapter)."""
    resource: bytes
    created_at: datetime
    provider_message_id: str | None = None
    """The provider's status message it came in, through an adapter."""


def add_dispense(tx: Tx, dispense: Dispense) -> None:
    tx.connection.execute(
        _INSERT,
        [
            {
                "id": dispense.dispense_id,
                "prescription_id": dispense.prescription_id,
                "item_id": dispense.item_id,
                "message_id": dispense.message_id,
                "provider_message_id": dispense.provider_message_id,
                "resource": dispense.resource,
                "created_at": dispense.created_at,
            }
        ],
    )


def _visible(caller: Caller) -> Select[Any]:
    return (
        select(
            dispense_table.c.id.label("dispense_id"),
            dispense_table.c.prescription_id,
            dispense_table.c.item_id,
            dispense_table.c.message_id,
            dispense_table.c.resource,
            dispense_table.c.created_at,
            dispense_table.c.provider_message_id,
        )
        .join(item_table, item_table.c.id == dispense_table.c.item_id)
        .where(visible_to(caller))
    )


def find_dispense(tx: Tx, dispense_id: str, *, caller: Caller) -> Dispense | None:
    row = tx.connection.execute(_visible(caller).where(dispense_table.c.id == dispense_id)).first()
    return None if row is None else Dispense(**row._mapping)


def dispenses_of_item(tx: Tx, item_id: str, *, caller: Caller) -> list[Dispense]:
    rows = tx.connection.execute(
        _visible(caller).where(dispense_table.c.item_id == item_id).order_by(dispense_table.c.created_at)
    )
    return [Dispense(**row._mapping) for row in rows]
