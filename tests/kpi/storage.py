"""Putting hand-built (or random) histories into a real database, and reading the KPI tables back."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from gateway.domain.status import ItemState, Status, StatusUpdate, Verdict, derive
from gateway.store.db import Database
from gateway.store.kpi import EventRecord
from gateway.store.models import InboundMessage, KpiMonthly, KpiRestatement, Prescription, StatusEvent
from tests.kpi.history import History

PROVIDERS = ("VNCEL", "VNFKT")
TRUSTS = ("RBA", "RBB")


def put_prescriptions(db: Database, histories: Iterable[History]) -> None:
    """The prescription rows (and their messages) the histories' events belong to."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    messages, prescriptions = [], []
    for number, history in enumerate(histories):
        messages.append(
            {
                "id": history.prescription_id,
                "tenant_ods": history.trust,
                "bundle_identifier": history.prescription_id,
                "event": "prescription-order",
                "body_sha256": "0" * 64,
                "body": b"{}",
                "response_status": 200,
                "response_body": b"{}",
                "request_id": "kpi-test",
                "received_at": now,
            }
        )
        prescriptions.append(
            {
                "id": history.prescription_id,
                "tenant_ods": history.trust,
                "short_form_id": f"{number:06d}-A99968-00000X",
                "long_form_id": history.prescription_id,
                "provider_ods": history.provider,
                "nhs_number": "9000000009",
                "prescription_type": "1201",
                "message_id": history.prescription_id,
                "status": "queued",
                "created_at": now,
                "updated_at": now,
            }
        )
    with db.write_connection() as connection:
        if messages:
            connection.execute(insert(InboundMessage.__table__), messages)  # type: ignore[attr-defined]
            connection.execute(insert(Prescription.__table__), prescriptions)  # type: ignore[attr-defined]


def put_events(db: Database, events: Sequence[EventRecord]) -> None:
    """Record events in this order (the database numbers them as they come)."""
    rows = [
        {
            "prescription_id": e.prescription_id,
            "item_id": e.item_id,
            "status": e.status,
            "occurred_at": e.occurred_at,
            "recorded_at": e.recorded_at,
            "source": e.source,
            "detail": dict(e.detail),
            "verdict": e.verdict,
        }
        for e in events
    ]
    if rows:
        with db.write_connection() as connection:
            connection.execute(insert(StatusEvent.__table__), rows)  # type: ignore[attr-defined]


def arrival_order(histories: Iterable[History]) -> list[EventRecord]:
    """Every event of the histories in the order the gateway recorded them."""
    events = [event for history in histories for event in history.events]
    return sorted(events, key=lambda e: (e.recorded_at, e.id))


def kpi_tables(
    db: Database,
) -> tuple[dict[tuple[str, ...], tuple[Any, ...]], dict[tuple[str, ...], datetime]]:
    """Everything in kpi_monthly and kpi_restatement, keyed, without the bookkeeping times."""
    monthly = KpiMonthly.__table__  # type: ignore[attr-defined]
    restated = KpiRestatement.__table__  # type: ignore[attr-defined]
    with db.read() as session:
        cells = {
            (row.month, row.provider_ods, row.tenant_ods, row.measure): (
                row.numerator,
                row.denominator,
                row.strata,
                row.distribution,
            )
            for row in session.execute(select(monthly))
        }
        notes = {
            (row.month, row.provider_ods, row.tenant_ods): row.restated_at
            for row in session.execute(select(restated))
        }
    return cells, notes


_REASONS = ("patient-not-home", "address-problem", "out-of-stock", None)
_PARTIES = ("patient", "courier", "provider", "trust", None)


def random_history(rng: random.Random, number: int) -> History:
    """A prescription that went somewhere in its life by legal steps, with duplicates, reports that
    arrive late or out of order, rearranged deliveries and the gateway's own steps."""
    history = History(f"p{number:04d}", provider=rng.choice(PROVIDERS), trust=rng.choice(TRUSTS))
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(0, 240 * 24 * 60))
    items = rng.choice((1, 1, 2))
    if rng.random() < 0.1:
        history.order(start, items=items, sent_after=None)
        history.gateway("undeliverable", start + timedelta(hours=rng.randrange(1, 48)), attempts=12)
        if rng.random() < 0.5:
            history.gateway("queued", start + timedelta(days=3), redriven=True)
            history.gateway("sent", start + timedelta(days=3, minutes=1))
        return history
    if rng.random() < 0.05:
        history.order(start, items=items, sent_after=None)
        history.gateway(
            "rejected", start + timedelta(minutes=2), reason="refused", code=rng.choice(("bad", None))
        )
        return history
    if rng.random() < 0.05:
        history.order(start, items=items, sent_after=None)
        for item in range(items):
            history.direct(f"{history.prescription_id}-{item}", "cancelled", start + timedelta(minutes=5))
        return history
    history.order(start, items=items)
    for item in range(rng.randrange(0, items + 1)):
        _random_walk(rng, history, f"{history.prescription_id}-{item}", start + timedelta(minutes=2))
    return history


# What reports say, and who says it (the status authority judges moves by who makes them).
_REPORTED = (
    Status.ACCEPTED, Status.REJECTED, Status.QUERY, Status.IN_PREPARATION, Status.DISPENSED,
    Status.DELIVERY_SCHEDULED, Status.OUT_FOR_DELIVERY, Status.DELIVERED, Status.DELIVERY_FAILED,
    Status.CANCEL_REQUESTED, Status.CANCELLED, Status.EXPIRED,
)  # fmt: skip


def _source(history: History, status: Status) -> str:
    if status == Status.CANCEL_REQUESTED:
        return f"trust:{history.trust}"
    return "gateway" if status == Status.EXPIRED else f"provider:{history.provider}"


def _random_walk(rng: random.Random, history: History, item: str, moment: datetime) -> None:
    """Legal reports only: each one is one the status authority's replay applies where it falls."""
    taken: list[StatusUpdate] = []
    for _ in range(rng.randrange(1, 12)):
        moment += timedelta(minutes=rng.choice((1, 30, 240, 1440, 4 * 1440)))
        legal = [
            status
            for status in _REPORTED
            if _applies(taken, StatusUpdate(status, moment, _source(history, status), len(taken)))
        ]
        if not legal:
            return
        status = rng.choice(legal)
        taken.append(StatusUpdate(status, moment, _source(history, status), len(taken)))
        late = timedelta(days=rng.choice((0, 0, 0, 0, 1, 9, 40)))
        detail = _detail(rng, status, moment)
        history.report(
            item, status.value, moment, recorded=moment + late, source=_source(history, status), **detail
        )
        if rng.random() < 0.15:  # the same report again, or the schedule rearranged
            again = (
                _detail(rng, status, moment + timedelta(hours=2))
                if status == Status.DELIVERY_SCHEDULED
                else detail
            )
            history.report(
                item,
                status.value,
                moment + timedelta(hours=2),
                verdict="duplicate",
                source=_source(history, status),
                **again,
            )


def _applies(taken: list[StatusUpdate], update: StatusUpdate) -> bool:
    _, verdicts = derive(ItemState(Status.SENT), [*taken, update])
    return verdicts[update.sequence] is Verdict.APPLIED


def _detail(rng: random.Random, status: Status, moment: datetime) -> dict[str, Any]:
    if status == Status.DELIVERY_SCHEDULED:
        agreed = moment + timedelta(days=rng.randrange(-2, 40))
        day = agreed.date().isoformat()
        if rng.random() < 0.5:  # a dateTime late in the (UTC) day: in summer, the next UK day
            day = f"{day}T23:{rng.randrange(60):02d}:00+00:00"
        return {"delivery_window": {"start": day, "end": day}} if rng.random() < 0.9 else {}
    if status in (Status.DELIVERY_FAILED, Status.REJECTED):
        reason = rng.choice(_REASONS)
        party = rng.choice(_PARTIES)
        detail: dict[str, Any] = {"reason": {"code": reason, "text": None}} if reason else {}
        return detail | ({"responsible_party": party} if party else {})
    return {}
