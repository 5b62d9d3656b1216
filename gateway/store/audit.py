"""The audit log's storage as the gateway uses it (`auth.audit` owns the rows and the chain): rows
written with the change they record, in the same transaction; sealing the unsealed rows into the chain."""

from __future__ import annotations

from collections.abc import Sequence

from auth.audit import AuditRecord, append, seal
from gateway.store.db import Database, Tx, translate_errors


def record(tx: Tx, entries: Sequence[AuditRecord]) -> None:
    append(tx.connection, entries)


def seal_audit_log(db: Database, *, batch: int = 1000) -> int:
    """Seal every unsealed audit row now, a batch per transaction; returns how many."""
    total = 0
    while True:
        with translate_errors(), db.write() as session:
            sealed = seal(session, limit=batch)
        total += sealed
        if sealed < batch:
            return total
