"""Migrations on both backends: they build what the models describe, and 0004 carries existing
outbox rows over (their ordering key is their prescription) and can be undone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

from gateway.store import outbox
from gateway.store.db import Database
from tests.support import postgres_schema, require_postgres

MIGRATIONS = Path(__file__).resolve().parents[1] / "gateway" / "store" / "migrations"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'migrations.db'}")
        yield db
        db.dispose()
        return
    require_postgres()
    with postgres_schema() as url:
        db = Database(url)
        yield db
        db.dispose()


def alembic(db: Database, action: str, revision: str) -> None:
    db.alembic(action, revision)


def insert_a_prescription(connection: Connection, now: datetime) -> None:
    """Provider VNCEL, message and prescription `p1` of trust RBA, as an old schema holds them."""
    connection.execute(
        text(
            "INSERT INTO provider (ods_code, name, adapter, settings, enabled, created_at, updated_at) "
            "VALUES ('VNCEL', 'Test', 'fhir-rest', '{}', true, :now, :now)"
        ),
        {"now": now},
    )
    connection.execute(
        text(
            "INSERT INTO inbound_message (id, tenant_ods, bundle_identifier, event, body_sha256, body, "
            "response_status, response_body, request_id, received_at) VALUES ('p1', 'RBA', 'b1', "
            "'prescription-order', 'x', :body, 200, :body, 'r1', :now)"
        ),
        {"body": b"{}", "now": now},
    )
    connection.execute(
        text(
            "INSERT INTO prescription (id, tenant_ods, short_form_id, long_form_id, provider_ods, "
            "nhs_number, prescription_type, message_id, status, created_at, updated_at) VALUES ('p1', "
            "'RBA', 'A99968-A99968-00000X', 'l1', 'VNCEL', '9000000009', '1201', 'p1', 'queued', :now, "
            ":now)"
        ),
        {"now": now},
    )


def test_the_migrations_build_what_the_models_describe(empty_database: Database) -> None:
    empty_database.migrate()
    with empty_database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []


def test_0004_gives_waiting_messages_their_prescription_as_ordering_key_and_can_be_undone(
    empty_database: Database,
) -> None:
    db = empty_database
    alembic(db, "upgrade", "0003_security")
    now = datetime.now(UTC) - timedelta(seconds=1)
    with db.write_connection() as connection:
        insert_a_prescription(connection, now)
        for kind in ("new", "cancel"):
            connection.execute(
                text(
                    "INSERT INTO outbox (prescription_id, kind, provider_ods, idempotency_key, state, "
                    "attempts, due_at, created_at, updated_at) VALUES ('p1', :kind, 'VNCEL', :key, "
                    "'pending', 0, :now, :now, :now)"
                ),
                {"kind": kind, "key": f"{kind}-p1", "now": now},
            )

    alembic(db, "upgrade", "head")
    with db.read() as session:
        rows = session.execute(
            text("SELECT kind, ordering_key, subscription_id, payload FROM outbox ORDER BY id")
        ).all()
    assert [tuple(row) for row in rows] == [("new", "p1", None, None), ("cancel", "p1", None, None)]
    claimed = outbox.claim_due(db, owner="w", now=datetime.now(UTC), lease=timedelta(seconds=30), limit=10)
    assert [message.idempotency_key for message in claimed] == ["new-p1"], "the cancel still waits"

    alembic(db, "downgrade", "0003_security")
    with db.engine.connect() as connection:
        schema = inspect(connection)
        assert "subscription" not in schema.get_table_names()
        columns = {column["name"] for column in schema.get_columns("outbox")}
    assert not columns & {"ordering_key", "subscription_id", "payload"}
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 2
    alembic(db, "upgrade", "head")
