"""Line items' status in the database: locking an item, its update history, recording a change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, insert, select, update

from gateway.domain.status import Status, StatusUpdate, Verdict, attention_status, prescription_status
from gateway.domain.tasks import ItemView
from gateway.store.models import Prescription, PrescriptionItem, StatusEvent

item_table = PrescriptionItem.__table__  # type: ignore[attr-defined]
prescription_table = Prescription.__table__  # type: ignore[attr-defined]
event_table = StatusEvent.__table__  # type: ignore[attr-defined]

VIEW_COLUMNS = (
    item_table.c.id,
    item_table.c.item_identifier,
    item_table.c.prescription_id,
    prescription_table.c.short_form_id,
    item_table.c.tenant_ods,
    item_table.c.provider_ods,
    prescription_table.c.nhs_number,
    item_table.c.status,
    item_table.c.version,
    item_table.c.last_modified,
    item_table.c.updated_at,
    prescription_table.c.created_at,
    prescription_table.c.status,
    prescription_table.c.partial,
    item_table.c.medicine,
)


def view_from_row(row: Any) -> ItemView:
    return ItemView(*row)


def views_query() -> Any:
    return select(*VIEW_COLUMNS).join(
        prescription_table, prescription_table.c.id == item_table.c.prescription_id
    )


def lock_item(
    connection: Connection, condition: ColumnElement[bool], *, for_update: bool
) -> tuple[ItemView, str | None] | None:
    """The item matching `condition` and where a query or cancel would return it, locked for the change."""
    query = views_query().add_columns(item_table.c.resume_status).where(condition)
    if for_update:
        query = query.with_for_update(of=item_table)
    row = connection.execute(query).first()
    if row is None:
        return None
    return view_from_row(row[: len(VIEW_COLUMNS)]), row[len(VIEW_COLUMNS)]


def item_by_reference(short_form_id: str, item_identifier: str, provider_ods: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = and_(
        prescription_table.c.short_form_id == short_form_id,
        item_table.c.item_identifier == item_identifier,
        item_table.c.provider_ods == provider_ods,
    )
    return condition


def item_by_tenant_reference(
    short_form_id: str, item_identifier: str, tenant_ods: str
) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = and_(
        prescription_table.c.short_form_id == short_form_id,
        item_table.c.item_identifier == item_identifier,
        item_table.c.tenant_ods == tenant_ods,
    )
    return condition


def item_by_id(item_id: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = item_table.c.id == item_id
    return condition


def item_history(connection: Connection, item_id: str) -> list[StatusUpdate]:
    """Every status update kept for the item (not the gateway's own prescription-level events)."""
    rows = connection.execute(
        select(event_table.c.status, event_table.c.occurred_at, event_table.c.source, event_table.c.id)
        .where(event_table.c.item_id == item_id, event_table.c.verdict.is_not(None))
        .order_by(event_table.c.id)
    ).all()
    return [
        StatusUpdate(Status(status), occurred_at, source, int(event_id))
        for status, occurred_at, source, event_id in rows
    ]


def latest_detail(connection: Connection, item_id: str) -> dict[str, Any] | None:
    """What the newest applied update of the item said (reason, delivery window...)."""
    row = connection.execute(
        select(event_table.c.detail)
        .where(event_table.c.item_id == item_id, event_table.c.verdict == Verdict.APPLIED.value)
        .order_by(event_table.c.occurred_at.desc(), event_table.c.id.desc())
        .limit(1)
    ).first()
    return row[0] if row and isinstance(row[0], dict) else None


def next_sequence(connection: Connection) -> int:
    """A number above every event id: the arrival order of an update not yet stored."""
    row = connection.execute(select(event_table.c.id).order_by(event_table.c.id.desc()).limit(1)).first()
    return (int(row[0]) if row else 0) + 1


def record_item_update(
    connection: Connection,
    view: ItemView,
    *,
    status: Status,
    resume: Status | None,
    update_status: Status,
    occurred_at: datetime,
    source: str,
    verdict: Verdict,
    detail: dict[str, Any],
    now: datetime,
) -> ItemView:
    """Keep the update in the log and, when the item's status moved, the item and its prescription."""
    connection.execute(
        insert(event_table),
        [
            {
                "prescription_id": view.prescription_id,
                "item_id": view.item_id,
                "status": update_status.value,
                "occurred_at": occurred_at,
                "recorded_at": now,
                "source": source,
                "detail": detail,
                "verdict": verdict.value,
            }
        ],
    )
    last_modified = max(filter(None, (view.last_modified, occurred_at)))
    connection.execute(
        update(item_table)
        .where(item_table.c.id == view.item_id)
        .values(
            status=status.value,
            resume_status=resume.value if resume else None,
            last_modified=last_modified,
            version=item_table.c.version + 1,
            updated_at=now,
        )
    )
    return refresh_prescription_status(connection, view.prescription_id, now=now, item_id=view.item_id)


def refresh_prescription_status(
    connection: Connection, prescription_id: str, *, now: datetime, item_id: str | None = None
) -> ItemView:
    """Derive the prescription's status from its items; returns the view of `item_id` (or the first)."""
    statuses = [
        Status(row[0])
        for row in connection.execute(
            select(item_table.c.status).where(item_table.c.prescription_id == prescription_id)
        )
    ]
    derived = prescription_status(statuses)
    attention = attention_status(statuses)
    connection.execute(
        update(prescription_table)
        .where(prescription_table.c.id == prescription_id)
        .values(
            status=derived.status.value,
            partial=derived.partial,
            attention=attention.value if attention else None,
            updated_at=now,
            # "Time in status" counts from the last change of the derived status, not of any item.
            status_since=case(
                (prescription_table.c.status == derived.status.value, prescription_table.c.status_since),
                else_=now,
            ),
        )
    )
    condition = item_table.c.id == item_id if item_id else item_table.c.prescription_id == prescription_id
    row = connection.execute(views_query().where(condition).order_by(item_table.c.position).limit(1)).one()
    return view_from_row(row)


def set_item_status_directly(
    connection: Connection,
    view: ItemView,
    status: Status,
    *,
    source: str,
    detail: dict[str, Any],
    now: datetime,
) -> ItemView:
    """A decision of the gateway's own, outside any provider's history (e.g. cancelled before sending)."""
    connection.execute(
        insert(event_table),
        [
            {
                "prescription_id": view.prescription_id,
                "item_id": view.item_id,
                "status": status.value,
                "occurred_at": now,
                "recorded_at": now,
                "source": source,
                "detail": detail,
                "verdict": None,
            }
        ],
    )
    connection.execute(
        update(item_table)
        .where(item_table.c.id == view.item_id)
        .values(status=status.value, resume_status=None, version=item_table.c.version + 1, updated_at=now)
    )
    return refresh_prescription_status(connection, view.prescription_id, now=now, item_id=view.item_id)
