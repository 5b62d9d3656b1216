"""The append-only status event log: every status change and every report, with its verdict.

The timeline of an item, the ordering of reports (`reports_of_item`) and, later, the KPIs are read
from here. Rows are never updated or deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select

from gateway.store.db import Tx
from gateway.store.models import StatusEvent

event_table = StatusEvent.__table__  # type: ignore[attr-defined]
INSERT_EVENT = insert(event_table)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One status event as written. `item_id` None: an event of the whole prescription. `verdict` None:
    a move judged on arrival (the order's journey to the provider), never replayed."""

    prescription_id: str
    item_id: str | None
    status: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    detail: dict[str, Any] | None
    verdict: str | None = None

    def values(self) -> dict[str, Any]:
        return {
            "prescription_id": self.prescription_id,
            "item_id": self.item_id,
            "status": self.status,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "source": self.source,
            "detail": self.detail,
            "verdict": self.verdict,
        }


def append(tx: Tx, events: Sequence[NewEvent]) -> None:
    if events:
        tx.connection.execute(INSERT_EVENT, [event.values() for event in events])


@dataclass(frozen=True, slots=True)
class RecordedReport:
    """A report kept for an item: what it said, when it happened, who said it, its place in the log."""

    status: str
    occurred_at: datetime
    source: str
    event_id: int


def reports_of_item(tx: Tx, item_id: str) -> list[RecordedReport]:
    """Every report kept for the item (events with a verdict), in the order they arrived."""
    rows = tx.connection.execute(
        select(
            event_table.c.status,
            event_table.c.occurred_at,
            event_table.c.source,
            event_table.c.id.label("event_id"),
        )
        .where(event_table.c.item_id == item_id, event_table.c.verdict.is_not(None))
        .order_by(event_table.c.id)
    )
    return [RecordedReport(**row._mapping) for row in rows]


def latest_detail(tx: Tx, item_id: str, *, verdict: str) -> dict[str, Any] | None:
    """What the newest report with `verdict` said of the item (reason, delivery window...)."""
    row = tx.connection.execute(
        select(event_table.c.detail)
        .where(event_table.c.item_id == item_id, event_table.c.verdict == verdict)
        .order_by(event_table.c.occurred_at.desc(), event_table.c.id.desc())
        .limit(1)
    ).first()
    return row.detail if row is not None and isinstance(row.detail, dict) else None


def next_sequence(tx: Tx) -> int:
    """A number above every event id: the arrival order of a report not yet stored."""
    row = tx.connection.execute(select(event_table.c.id).order_by(event_table.c.id.desc()).limit(1)).first()
    return (int(row.id) if row else 0) + 1


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    status: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    detail: dict[str, Any]
    verdict: str | None


def timeline(tx: Tx, *, prescription_id: str, item_id: str) -> list[TimelineEvent]:
    """The item's events and its prescription's, oldest first."""
    rows = tx.connection.execute(
        select(
            event_table.c.status,
            event_table.c.occurred_at,
            event_table.c.recorded_at,
            event_table.c.source,
            event_table.c.detail,
            event_table.c.verdict,
        )
        .where(
            event_table.c.prescription_id == prescription_id,
            or_(event_table.c.item_id == item_id, event_table.c.item_id.is_(None)),
        )
        .order_by(event_table.c.id)
    )
    return [
        TimelineEvent(
            status=row.status,
            occurred_at=row.occurred_at,
            recorded_at=row.recorded_at,
            source=row.source,
            detail=row.detail if isinstance(row.detail, dict) else {},
            verdict=row.verdict,
        )
        for row in rows
    ]
