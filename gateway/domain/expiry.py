"""Expiry: prescriptions past their validity period with nothing dispensed become `expired`."""

from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from fhir_profiles.outcome import OperationOutcomeError
from gateway.clock import Clock
from gateway.domain.cancellation import StatusListener
from gateway.domain.status import BEFORE_DISPENSED, GATEWAY_SOURCE, Status
from gateway.domain.status_updates import change_item
from gateway.logs import get_logger
from gateway.store import status as store
from gateway.store.db import Database
from gateway.store.models import OutboxMessage

log = get_logger("gateway.expiry")
_outbox = OutboxMessage.__table__  # type: ignore[attr-defined]


def expire_due(db: Database, *, now: datetime, notify: StatusListener | None = None, limit: int = 500) -> int:
    """Expire the items whose prescription's validity ended before `now`; how many were expired."""
    expired = 0
    with db.write_connection() as connection:
        rows = connection.execute(
            store.views_query()
            .where(
                store.prescription_table.c.valid_until < now,
                store.item_table.c.status.in_([status.value for status in BEFORE_DISPENSED]),
            )
            .limit(limit)
        ).all()
        for row in rows:
            view = store.view_from_row(row)
            # An order not sent yet is withdrawn: it would arrive expired.
            connection.execute(
                update(_outbox)
                .where(
                    _outbox.c.prescription_id == view.prescription_id,
                    _outbox.c.kind == "new",
                    _outbox.c.state.in_(("pending", "dead")),
                )
                .values(state="cancelled", updated_at=now)
            )
            try:
                change_item(
                    connection,
                    view,
                    status=Status.EXPIRED,
                    occurred_at=now,
                    source=GATEWAY_SOURCE,
                    detail={"reason": {"code": "validity-period-ended", "text": "Validity period ended"}},
                    now=now,
                    expression=None,
                    notify=notify,
                )
            except OperationOutcomeError:
                continue
            expired += 1
    return expired


async def run_expiry(
    db: Database, *, clock: Clock, interval: float, notify: StatusListener | None = None
) -> None:
    """Until cancelled: expire what is due, every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            count = await asyncio.to_thread(expire_due, db, now=clock(), notify=notify)
        except SQLAlchemyError as exc:
            log.error("expiry_failed", error_type=type(exc).__name__)
            continue
        if count:
            log.info("prescriptions_expired", items=count)
