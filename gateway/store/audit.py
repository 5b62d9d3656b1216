"""The audit log's storage as the gateway uses it (`auth.audit` owns the rows and the chain): rows
written with the change they record, in the same transaction; sealing the unsealed rows into the chain."""

from __future__ import annotations

from collections.abc import Sequence

from auth.audit import AuditRecord, append, apply_seal, plan_seal
from gateway.store.db import Database, Tx


def record(tx: Tx, entries: Sequence[AuditRecord]) -> None:
    append(tx.connection, entries)


def seal_audit_log(db: Database, *, batch: int = 1000) -> int:
    """Seal every unsealed audit row now, a batch at a time; returns how many.

    Each batch is read and hashed in a read transaction and only stored in a write transaction, which
    checks that the chain's head has not moved meanwhile: on SQLite intake's writers wait for the
    few milliseconds of the update, not for the hashing. A batch another sealer came first to is
    dropped, and that sealer goes on with the chain."""
    total = 0
    while True:
        with db.snapshot() as tx:
            plan = plan_seal(tx.connection, limit=batch)
        if not plan.changes:
            return total
        with db.transaction() as tx:
            sealed = apply_seal(tx.connection, plan)
        total += sealed
        if sealed < batch:
            return total
