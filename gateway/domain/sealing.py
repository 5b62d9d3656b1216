"""The serving process's security housekeeping: seal the audit log, forget expired assertion ids.

Runs every few seconds beside the API (and as `homecare-gateway audit seal` for a gateway run
without it). Several processes may run it at once: sealing takes a lock, so they never fork the
chain.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import SQLAlchemyError

from auth.audit import seal
from auth.tokens import TokenService
from gateway.logs import get_logger
from gateway.store.db import Database

log = get_logger("gateway.audit")


def seal_audit_log(db: Database, *, batch: int = 1000) -> int:
    """Seal every unsealed audit row now, a batch per transaction; returns how many."""
    total = 0
    while True:
        with db.write() as session:
            sealed = seal(session, limit=batch)
        total += sealed
        if sealed < batch:
            return total


async def run_housekeeping(db: Database, tokens: TokenService, *, interval: float) -> None:
    """Until cancelled. A failed round (the database away for a moment) is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            sealed = await asyncio.to_thread(seal_audit_log, db)
            await asyncio.to_thread(tokens.purge_used_assertions)
        except SQLAlchemyError as exc:
            log.error("audit_seal_failed", error_type=type(exc).__name__)
            continue
        if sealed:
            log.debug("audit_sealed", rows=sealed)
