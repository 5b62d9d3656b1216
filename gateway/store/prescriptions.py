"""Prescriptions as intake writes them: the message, the prescription, its items, their opening
events, the order in the outbox and the audit row, all in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select

from auth.audit import INSERT_AUDIT, AuditRecord
from auth.identity import Caller
from gateway.store import events, messages, outbox
from gateway.store.db import Tx
from gateway.store.items import item_table, prescription_table, prescription_visible_to
from gateway.store.writer import Rows

_INSERT_PRESCRIPTION = insert(prescription_table)
_INSERT_ITEM = insert(item_table)


@dataclass(frozen=True, slots=True)
class NewItem:
    item_id: str
    position: int
    item_identifier: str
    resource: bytes
    medicine: str | None


@dataclass(frozen=True, slots=True)
class NewPrescription:
    """Everything one accepted prescription-order writes, in one transaction."""

    prescription_id: str
    tenant_ods: str
    short_form_id: str
    long_form_id: str
    provider_ods: str
    nhs_number: str
    prescription_type: str
    status: str
    valid_until: datetime | None
    created_at: datetime
    items: Sequence[NewItem]
    message: messages.NewMessage
    events: Sequence[events.NewEvent]
    outbox: Sequence[outbox.NewMessage]
    audit: Sequence[AuditRecord]

    def prescription_values(self) -> dict[str, Any]:
        return {
            "id": self.prescription_id,
            "tenant_ods": self.tenant_ods,
            "short_form_id": self.short_form_id,
            "long_form_id": self.long_form_id,
            "provider_ods": self.provider_ods,
            "nhs_number": self.nhs_number,
            "prescription_type": self.prescription_type,
            "message_id": self.message.message_id,
            "status": self.status,
            "valid_until": self.valid_until,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "status_since": self.created_at,
        }

    def item_values(self) -> list[dict[str, Any]]:
        return [
            {
                "id": item.item_id,
                "prescription_id": self.prescription_id,
                "position": item.position,
                "item_identifier": item.item_identifier,
                "tenant_ods": self.tenant_ods,
                "provider_ods": self.provider_ods,
                "resource": item.resource,
                "medicine": item.medicine,
                "status": self.status,
                "updated_at": self.created_at,
            }
            for item in self.items
        ]


def insert_prescription(tx: Tx, new: NewPrescription) -> None:
    """Write an accepted prescription; `AlreadyStored` when its message or prescription ID was taken."""
    prescription_rows(new)(tx)


def prescription_rows(new: NewPrescription) -> Rows:
    """An accepted prescription's rows, parents first, as the batch writer takes them (it inserts the
    rows of a whole group commit with one statement per table); `AlreadyStored` when run, if its
    message or prescription ID was taken."""
    # Core inserts: the hot path of intake needs no ORM machinery.
    return Rows(
        (
            (messages.INSERT_MESSAGE, [new.message.values()]),
            (_INSERT_PRESCRIPTION, [new.prescription_values()]),
            (_INSERT_ITEM, new.item_values()),
            (events.INSERT_EVENT, [event.values() for event in new.events]),
            (outbox.INSERT_OUTBOX, [message.values() for message in new.outbox]),
            (INSERT_AUDIT, [record.row() for record in new.audit]),
        )
    )


def prescription_id_taken(tx: Tx, *, tenant_ods: str, short_form_id: str) -> bool:
    found = tx.connection.execute(
        select(prescription_table.c.id).where(
            prescription_table.c.tenant_ods == tenant_ods,
            prescription_table.c.short_form_id == short_form_id,
        )
    ).first()
    return found is not None


def count_prescriptions(tx: Tx) -> int:
    return int(tx.connection.execute(select(func.count()).select_from(prescription_table)).scalar_one())


@dataclass(frozen=True, slots=True)
class StoredItem:
    """A line item as the trust sent it (its MedicationRequest's bytes) and its status now."""

    item_id: str
    resource: bytes
    status: str
    updated_at: datetime


def stored_item(tx: Tx, item_id: str, *, caller: Caller) -> StoredItem | None:
    row = tx.connection.execute(
        select(
            item_table.c.id.label("item_id"),
            item_table.c.resource,
            item_table.c.status,
            item_table.c.updated_at,
        )
        .join(prescription_table, prescription_table.c.id == item_table.c.prescription_id)
        .where(item_table.c.id == item_id, prescription_visible_to(caller))
    ).first()
    return None if row is None else StoredItem(**row._mapping)
