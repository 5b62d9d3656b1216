"""Whether the database answers: the readiness check."""

from __future__ import annotations

from sqlalchemy import text

from gateway.store.db import Database, translate_errors


def ping(db: Database) -> None:
    """A round trip to the database; `StoreUnavailable` when it cannot be reached or used."""
    with translate_errors(), db.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
