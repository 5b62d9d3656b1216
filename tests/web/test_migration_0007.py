"""Migration 0007 on both backends: existing line items get their medicine's name from the stored
MedicationRequest, prescriptions their status-since time and what needs attention; and it can be
undone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import inspect, text

from gateway.store.db import Database
from tests.test_migrations import (  # noqa: F401  (the fixture: an empty database per backend)
    empty_database,
    insert_a_prescription,
)


def test_0007_backfills_medicine_names_and_status_since_and_can_be_undone(empty_database: Database) -> None:  # noqa: F811
    db = empty_database
    db.alembic("upgrade", "0006_search_indexes")
    now = datetime.now(UTC) - timedelta(hours=1)
    named = {
        "resourceType": "MedicationRequest",
        "medicationCodeableConcept": {"text": "Adalimumab 40mg pens"},
    }
    coded = {
        "resourceType": "MedicationRequest",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "1", "display": "Etanercept 50mg"}]
        },
    }
    with db.write_connection() as connection:
        insert_a_prescription(connection, now)
        items = (("i1", named, "rejected"), ("i2", coded, "delivery-failed"), ("i3", {"x": 1}, "accepted"))
        for position, (item_id, resource, status) in enumerate(items):
            connection.execute(
                text(
                    "INSERT INTO prescription_item (id, prescription_id, tenant_ods, provider_ods, position, "
                    "item_identifier, resource, status, version, updated_at) VALUES (:id, 'p1', 'RBA', 'VNCEL', "
                    ":position, :id, :resource, :status, 1, :now)"
                ),
                {
                    "id": item_id,
                    "position": position,
                    "resource": orjson.dumps(resource),
                    "status": status,
                    "now": now,
                },
            )
    db.alembic("upgrade", "0007_clinician_accounts")
    with db.read() as session:
        medicines = session.execute(text("SELECT id, medicine FROM prescription_item ORDER BY id")).all()
        since, updated, attention = session.execute(
            text("SELECT status_since, updated_at, attention FROM prescription")
        ).one()
    assert [tuple(row) for row in medicines] == [
        ("i1", "Adalimumab 40mg pens"),
        ("i2", "Etanercept 50mg"),
        ("i3", None),
    ]
    assert since == updated
    assert attention == "delivery-failed", "the most urgent of its items' statuses"
    db.alembic("downgrade", "0006_search_indexes")
    with db.engine.connect() as connection:
        tables = inspect(connection).get_table_names()
        columns = {column["name"] for column in inspect(connection).get_columns("prescription_item")}
    assert "clinician_user" not in tables and "web_session" not in tables and "medicine" not in columns
