"""Reading and writing prescriptions, their messages, line items and status events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, bindparam, func, insert
from sqlalchemy.engine import Dialect
from sqlmodel import Session, col, select

from auth.audit import AuditRecord, append
from auth.identity import Caller
from auth.tenancy import visible_filter
from gateway.store.models import (
    InboundMessage,
    OutboxMessage,
    Prescription,
    PrescriptionItem,
    StatusEvent,
)
from gateway.store.writer import groupable


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The answer given to an accepted message, replayed to an identical resubmission."""

    body_sha256: str
    status_code: int
    body: bytes
    location: str | None


def find_message_response(
    session: Session, *, tenant_ods: str, bundle_identifier: str
) -> StoredResponse | None:
    row = session.execute(
        select(
            col(InboundMessage.body_sha256),
            col(InboundMessage.response_status),
            col(InboundMessage.response_body),
            col(InboundMessage.response_location),
        ).where(
            col(InboundMessage.tenant_ods) == tenant_ods,
            col(InboundMessage.bundle_identifier) == bundle_identifier,
        )
    ).first()
    if row is None:
        return None
    return StoredResponse(row[0], row[1], row[2], row[3])


def prescription_id_taken(session: Session, *, tenant_ods: str, short_form_id: str) -> bool:
    found = session.execute(
        select(col(Prescription.id)).where(
            col(Prescription.tenant_ods) == tenant_ods, col(Prescription.short_form_id) == short_form_id
        )
    ).first()
    return found is not None


def message_row(
    *,
    message_id: str,
    tenant_ods: str,
    bundle_identifier: str,
    event: str,
    digest: str,
    body: bytes,
    response_status: int,
    response_body: bytes,
    location: str | None,
    request_id: str,
    received_at: datetime,
) -> dict[str, Any]:
    """An accepted message as stored: its exact bytes and the answer it got (for replays)."""
    return {
        "id": message_id,
        "tenant_ods": tenant_ods,
        "bundle_identifier": bundle_identifier,
        "event": event,
        "body_sha256": digest,
        "body": body,
        "response_status": response_status,
        "response_body": response_body,
        "response_location": location,
        "request_id": request_id,
        "received_at": received_at,
    }


@dataclass(frozen=True, slots=True)
class NewPrescription:
    """Everything one accepted prescription-order writes, in one transaction."""

    message: dict[str, Any]
    prescription: dict[str, Any]
    items: Sequence[dict[str, Any]]
    events: Sequence[dict[str, Any]]
    outbox: Sequence[dict[str, Any]]
    audit: Sequence[AuditRecord] = ()


_INSERT_MESSAGE = insert(InboundMessage.__table__)  # type: ignore[attr-defined]
_INSERT_PRESCRIPTION = insert(Prescription.__table__)  # type: ignore[attr-defined]
_INSERT_ITEM = insert(PrescriptionItem.__table__)  # type: ignore[attr-defined]
_INSERT_EVENT = insert(StatusEvent.__table__)  # type: ignore[attr-defined]
_INSERT_OUTBOX = insert(OutboxMessage.__table__)  # type: ignore[attr-defined]


def _insert_together(connection: Connection, calls: list[dict[str, Any]]) -> None:
    insert_prescriptions(connection, [call["new"] for call in calls])


@groupable(_insert_together)
def insert_prescription(connection: Connection, *, new: NewPrescription) -> None:
    # Core inserts: the hot path of intake needs no ORM machinery. The audit row is written in the
    # same transaction as the change it records.
    connection.execute(_INSERT_MESSAGE, [new.message])
    connection.execute(_INSERT_PRESCRIPTION, [new.prescription])
    connection.execute(_INSERT_ITEM, list(new.items))
    connection.execute(_INSERT_EVENT, list(new.events))
    connection.execute(_INSERT_OUTBOX, list(new.outbox))
    append(connection, new.audit)


@dataclass(frozen=True, slots=True)
class _PreparedInsert:
    sql: str
    names: tuple[str, ...]
    convert: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


class _BulkInsert:
    """Many rows into one table with a single driver-level executemany.

    The statement and each column's bind conversion (the same SQLAlchemy type processors a Core
    insert uses) are prepared once per dialect and column set; each batch then costs one tuple per
    row. A Core insert redoes the statement lookup and parameter processing on every execution,
    which on the intake path cost more than the insert itself.
    """

    def __init__(self, table: Table) -> None:
        self._table = table
        self._prepared: dict[tuple[str, tuple[str, ...]], _PreparedInsert] = {}

    def __call__(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        dialect = connection.dialect
        keys = tuple(rows[0])
        prepared = self._prepared.get((dialect.name, keys)) or self._prepare(dialect, keys)
        pairs = tuple(zip(prepared.names, prepared.convert, strict=True))
        values = [
            tuple(row[name] if convert is None else convert(row[name]) for name, convert in pairs)
            for row in rows
        ]
        parameters: list[Any] = (
            values if prepared.positional else [dict(zip(prepared.names, row, strict=True)) for row in values]
        )
        # Through SQLAlchemy's driver-level path: its events and error translation still apply.
        connection.exec_driver_sql(prepared.sql, parameters)

    def _prepare(self, dialect: Dialect, keys: tuple[str, ...]) -> _PreparedInsert:
        compiled = insert(self._table).values({key: bindparam(key) for key in keys}).compile(dialect=dialect)
        names = tuple(compiled.positiontup or ()) if compiled.positional else keys
        prepared = _PreparedInsert(
            sql=compiled.string,
            names=names,
            convert=tuple(
                self._table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
            ),
            positional=bool(compiled.positional),
        )
        self._prepared[(dialect.name, keys)] = prepared
        return prepared


_BULK_MESSAGE = _BulkInsert(InboundMessage.__table__)  # type: ignore[attr-defined]
_BULK_PRESCRIPTION = _BulkInsert(Prescription.__table__)  # type: ignore[attr-defined]
_BULK_ITEM = _BulkInsert(PrescriptionItem.__table__)  # type: ignore[attr-defined]
_BULK_EVENT = _BulkInsert(StatusEvent.__table__)  # type: ignore[attr-defined]
_BULK_OUTBOX = _BulkInsert(OutboxMessage.__table__)  # type: ignore[attr-defined]


def insert_prescriptions(connection: Connection, news: Sequence[NewPrescription]) -> None:
    """Several accepted prescriptions at once: one executemany per table, not one insert per row."""
    _BULK_MESSAGE(connection, [new.message for new in news])
    _BULK_PRESCRIPTION(connection, [new.prescription for new in news])
    _BULK_ITEM(connection, [item for new in news for item in new.items])
    _BULK_EVENT(connection, [event for new in news for event in new.events])
    _BULK_OUTBOX(connection, [message for new in news for message in new.outbox])
    append(connection, [record for new in news for record in new.audit])


def get_prescription(session: Session, prescription_id: str) -> Prescription | None:
    return session.get(Prescription, prescription_id)


def visible_to(caller: Caller) -> ColumnElement[bool]:
    """The tenancy rule (auth.tenancy) over the prescription table: what this caller may see."""
    return visible_filter(
        caller, tenant_column=col(Prescription.tenant_ods), provider_column=col(Prescription.provider_ods)
    )


def get_item(
    session: Session, item_id: str, *, visible: ColumnElement[bool]
) -> tuple[PrescriptionItem, Prescription] | None:
    row = session.execute(
        select(PrescriptionItem, Prescription)
        .join(Prescription, col(Prescription.id) == col(PrescriptionItem.prescription_id))
        .where(col(PrescriptionItem.id) == item_id, visible)
    ).first()
    return (row[0], row[1]) if row else None


def get_message_body(session: Session, message_id: str, *, visible: ColumnElement[bool]) -> bytes | None:
    """The bytes of an accepted prescription message, if its prescription is visible."""
    row = session.execute(
        select(col(InboundMessage.body))
        .join(Prescription, col(Prescription.message_id) == col(InboundMessage.id))
        .where(col(InboundMessage.id) == message_id, visible)
    ).first()
    return row[0] if row else None


def count_prescriptions(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(Prescription)).scalar_one())
