"""What the run-out watch reads and keeps: how far it has read the event log (a `kpi_fold` row named
`run-out`), the supplies of the patients it looks at, the day each course is next due a look
(`run_out_due`), and the warnings raised (`run_out_alert`), once per course and supply
(gateway.kpi.watch)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.store.db import Tx
from gateway.store.kpi import events_after
from gateway.store.models import KpiFold, Prescription, PrescriptionItem, RunOutAlert, RunOutDue, StatusEvent

_alert = RunOutAlert.__table__  # type: ignore[attr-defined]
_due = RunOutDue.__table__  # type: ignore[attr-defined]
_fold = KpiFold.__table__  # type: ignore[attr-defined]
_event = StatusEvent.__table__  # type: ignore[attr-defined]
_item = PrescriptionItem.__table__  # type: ignore[attr-defined]
_prescription = Prescription.__table__  # type: ignore[attr-defined]

T = TypeVar("T")
_CHUNK = 500
DELIVERED = "delivered"
SCHEDULED = "delivery-scheduled"
APPLIED = "applied"
WATCH = "run-out"
Patient = tuple[str, str]  # (trust ODS code, NHS number)


def _chunks(values: Collection[T]) -> Iterator[list[T]]:
    ordered = list(values)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


@dataclass(frozen=True, slots=True)
class SupplyRow:
    """One line item of a patient with a recent delivery, with what the run-out rule needs."""

    item_id: str
    prescription_id: str
    tenant_ods: str
    provider_ods: str
    nhs_number: str
    ordered_at: datetime
    status: str
    resource: bytes
    medicine: str | None
    delivered_at: datetime | None
    delivery_window: dict[str, Any] | None
    scheduled_at: datetime | None


def watch_position(tx: Tx) -> int:
    """The last event id the watch has read (0 before its first round)."""
    value = tx.connection.execute(select(_fold.c.last_event_id).where(_fold.c.name == WATCH)).scalar()
    return int(value or 0)


def set_watch_position(tx: Tx, position: int, *, now: datetime) -> None:
    statement = postgresql_insert if tx.connection.dialect.name == "postgresql" else sqlite_insert
    tx.connection.execute(
        statement(_fold)
        .values(name=WATCH, last_event_id=position, updated_at=now)
        .on_conflict_do_update(index_elements=["name"], set_={"last_event_id": position, "updated_at": now})
    )


@dataclass(frozen=True, slots=True)
class NewEvents:
    prescription_ids: set[str]
    last_id: int  # the highest id read (the position when nothing is younger than the grace)
    settled_id: int  # the highest id up to which every event was recorded before `settled_before`


def new_events(tx: Tx, after_id: int, *, settled_before: datetime, batch: int = 20_000) -> NewEvents:
    """The prescriptions with an event after `after_id`, and how far the log may be taken as read:
    up to the first event recorded after `settled_before` (an id below it may still commit)."""
    prescriptions: set[str] = set()
    position, settled, unsettled = after_id, after_id, False
    while True:
        heads = events_after(tx, position, limit=batch)
        for head in heads:
            prescriptions.add(head.prescription_id)
            unsettled = unsettled or head.recorded_at >= settled_before
            if not unsettled:
                settled = head.id
        if heads:
            position = heads[-1].id
        if len(heads) < batch:
            return NewEvents(prescriptions, position, settled)


def patients_of(tx: Tx, prescription_ids: Collection[str]) -> set[Patient]:
    found: set[Patient] = set()
    for chunk in _chunks(prescription_ids):
        found.update(
            (row[0], row[1])
            for row in tx.connection.execute(
                select(_prescription.c.tenant_ods, _prescription.c.nhs_number).where(
                    _prescription.c.id.in_(chunk)
                )
            )
        )
    return found


def patients_due(tx: Tx, today: date) -> set[Patient]:
    """The patients with a course due a look on or before `today`."""
    rows = tx.connection.execute(
        select(_prescription.c.tenant_ods, _prescription.c.nhs_number)
        .select_from(_due)
        .join(_item, _item.c.id == _due.c.item_id)
        .join(_prescription, _prescription.c.id == _item.c.prescription_id)
        .where(_due.c.due_on <= today)
    )
    return {(row[0], row[1]) for row in rows}


def set_due(tx: Tx, dues: dict[str, tuple[str, date | None]]) -> None:
    """For each course: the day it is next due a look (and one of its items), or None: only when
    something happens to it. Two processes may set the same course at once: the last one wins."""
    gone = [course for course, (_, due_on) in dues.items() if due_on is None]
    for chunk in _chunks(gone):
        tx.connection.execute(delete(_due).where(_due.c.course.in_(chunk)))
    rows = [
        {"course": course, "item_id": item_id, "due_on": due_on}
        for course, (item_id, due_on) in sorted(dues.items())
        if due_on is not None
    ]
    statement = postgresql_insert if tx.connection.dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(rows), _CHUNK):
        upsert = statement(_due).values(rows[start : start + _CHUNK])
        tx.connection.execute(
            upsert.on_conflict_do_update(
                index_elements=["course"],
                set_={"item_id": upsert.excluded.item_id, "due_on": upsert.excluded.due_on},
            )
        )


def supplies_of_patients(tx: Tx, patients: Collection[Patient]) -> list[SupplyRow]:
    """Every line item of these patients (each at its trust), with its first applied delivery and
    its latest agreed delivery window."""
    patients = set(patients)
    rows: list[Any] = []
    for chunk in _chunks({nhs for _, nhs in patients}):
        rows.extend(
            row
            for row in tx.connection.execute(
                select(
                    _item.c.id,
                    _item.c.prescription_id,
                    _item.c.tenant_ods,
                    _item.c.provider_ods,
                    _prescription.c.nhs_number,
                    _prescription.c.created_at,
                    _item.c.status,
                    _item.c.resource,
                    _item.c.medicine,
                )
                .join(_prescription, _prescription.c.id == _item.c.prescription_id)
                .where(_prescription.c.nhs_number.in_(chunk))
            )
            if (row[2], row[4]) in patients
        )
    delivered: dict[str, datetime] = {}
    windows: dict[str, tuple[datetime, int, dict[str, Any] | None]] = {}
    for chunk in _chunks([row[0] for row in rows]):
        for item_id, status, occurred_at, event_id, detail in tx.connection.execute(
            select(
                _event.c.item_id, _event.c.status, _event.c.occurred_at, _event.c.id, _event.c.detail
            ).where(
                _event.c.item_id.in_(chunk),
                _event.c.status.in_((DELIVERED, SCHEDULED)),
                _event.c.verdict == APPLIED,
            )
        ):
            if status == DELIVERED:
                if item_id not in delivered or occurred_at < delivered[item_id]:
                    delivered[item_id] = occurred_at
            elif item_id not in windows or (occurred_at, event_id) > windows[item_id][:2]:
                window = detail.get("delivery_window") if isinstance(detail, dict) else None
                windows[item_id] = (occurred_at, event_id, window if isinstance(window, dict) else None)
    return [
        SupplyRow(
            item_id=row[0],
            prescription_id=row[1],
            tenant_ods=row[2],
            provider_ods=row[3],
            nhs_number=row[4],
            ordered_at=row[5],
            status=row[6],
            resource=row[7],
            medicine=row[8],
            delivered_at=delivered.get(row[0]),
            delivery_window=windows[row[0]][2] if row[0] in windows else None,
            scheduled_at=windows[row[0]][0] if row[0] in windows else None,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    course: str
    supply_item_id: str
    prescription_id: str
    item_id: str
    tenant_ods: str
    provider_ods: str
    run_out_on: date
    reason: str
    raised_at: datetime
    cleared_at: datetime | None


_ALERT_COLUMNS = (
    _alert.c.id,
    _alert.c.course,
    _alert.c.supply_item_id,
    _alert.c.prescription_id,
    _alert.c.item_id,
    _alert.c.tenant_ods,
    _alert.c.provider_ods,
    _alert.c.run_out_on,
    _alert.c.reason,
    _alert.c.raised_at,
    _alert.c.cleared_at,
)


def open_alerts(tx: Tx, courses: Collection[str] | None = None) -> list[Alert]:
    """The open warnings (of these courses)."""
    query = select(*_ALERT_COLUMNS).where(_alert.c.cleared_at.is_(None))
    if courses is None:
        return [Alert(*row) for row in tx.connection.execute(query)]
    found: list[Alert] = []
    for chunk in _chunks(courses):
        found.extend(Alert(*row) for row in tx.connection.execute(query.where(_alert.c.course.in_(chunk))))
    return found


def alerts(tx: Tx, *, tenant_ods: str | None = None) -> list[Alert]:
    """Every warning raised (open or cleared), oldest first."""
    query = select(*_ALERT_COLUMNS).order_by(_alert.c.id)
    if tenant_ods is not None:
        query = query.where(_alert.c.tenant_ods == tenant_ods)
    return [Alert(*row) for row in tx.connection.execute(query)]


def add_alert(
    tx: Tx,
    *,
    course: str,
    supply_item_id: str,
    prescription_id: str,
    item_id: str,
    tenant_ods: str,
    provider_ods: str,
    run_out_on: date,
    reason: str,
    now: datetime,
) -> bool:
    """Record the warning for this course and supply; False when one was raised for it already."""
    statement = postgresql_insert if tx.connection.dialect.name == "postgresql" else sqlite_insert
    result = tx.connection.execute(
        statement(_alert)
        .values(
            course=course,
            supply_item_id=supply_item_id,
            prescription_id=prescription_id,
            item_id=item_id,
            tenant_ods=tenant_ods,
            provider_ods=provider_ods,
            run_out_on=run_out_on,
            reason=reason,
            raised_at=now,
        )
        .on_conflict_do_nothing(index_elements=["course", "supply_item_id"])
        .returning(_alert.c.id)
    )
    return result.first() is not None


def clear_alerts(tx: Tx, alert_ids: Sequence[int], *, now: datetime) -> None:
    for chunk in _chunks(alert_ids):
        tx.connection.execute(
            update(_alert).where(_alert.c.id.in_(chunk), _alert.c.cleared_at.is_(None)).values(cleared_at=now)
        )


def touch_prescription(tx: Tx, prescription_id: str, *, now: datetime) -> None:
    """Mark the prescription as having new activity (the worklist's live updates follow it)."""
    tx.connection.execute(
        update(_prescription).where(_prescription.c.id == prescription_id).values(updated_at=now)
    )


def open_run_out_dates(tx: Tx, prescription_ids: Sequence[str]) -> dict[str, date]:
    """The earliest run-out date of the open warnings on each of these prescriptions."""
    found: dict[str, date] = {}
    for chunk in _chunks(prescription_ids):
        rows = tx.connection.execute(
            select(_alert.c.prescription_id, func.min(_alert.c.run_out_on))
            .where(and_(_alert.c.prescription_id.in_(chunk), _alert.c.cleared_at.is_(None)))
            .group_by(_alert.c.prescription_id)
        )
        found.update({row[0]: row[1] for row in rows})
    return found


def open_alert_prescriptions() -> Any:
    """A subquery of the prescriptions with an open warning (a worklist rule)."""
    return select(_alert.c.prescription_id).where(_alert.c.cleared_at.is_(None))
