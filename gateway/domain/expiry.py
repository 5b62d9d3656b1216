"""Expiry: prescriptions past their validity period with nothing dispensed become `expired`."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.context import Context
from gateway.domain.status import BEFORE_DISPENSED, GATEWAY_SOURCE, Status
from gateway.domain.status_authority import RefusedMove, change_status
from gateway.store import items, outbox

_VALIDITY_ENDED = {"reason": {"code": "validity-period-ended", "text": "Validity period ended"}}


def expire_due(ctx: Context, *, now: datetime, limit: int = 500) -> int:
    """Expire the items whose prescription's validity ended before `now`; how many were expired."""
    expired = 0
    with ctx.db.transaction() as tx:
        for view in items.past_validity(
            tx, now=now, statuses=[status.value for status in BEFORE_DISPENSED], limit=limit
        ):
            # An order not sent yet is withdrawn: it would arrive expired.
            outbox.withdraw_order(tx, view.prescription_id, now=now)
            try:
                change_status(
                    tx,
                    view,
                    Status.EXPIRED,
                    source=GATEWAY_SOURCE,
                    occurred_at=now,
                    detail=_VALIDITY_ENDED,
                    now=now,
                    listener=ctx.listener,
                )
            except RefusedMove:
                continue
            expired += 1
    return expired
