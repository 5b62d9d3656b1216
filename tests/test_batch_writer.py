"""The batch writer: grouped writes (one executemany per table) keep every write's own outcome."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.clock import system_clock
from gateway.domain.intake import Acceptance, check_message
from gateway.store.db import Database
from gateway.store.prescriptions import NewPrescription, insert_prescription, insert_prescriptions
from gateway.store.providers import ProviderDirectory, add_provider
from gateway.store.writer import BatchWriter

TRUST = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))


@pytest.fixture
def sqlite(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    database.migrate()
    with database.write() as session:
        add_provider(
            session, ods_code="VNCEL", name="Provider", adapter="fhir-rest", settings={}, now=system_clock()
        )
    return database


def accepted_rows(db: Database, count: int, seed: int = 3) -> list[NewPrescription]:
    builder = PrescriptionMessageBuilder(seed=seed, performer_ods="VNCEL")
    providers = ProviderDirectory(db, ttl=60)
    rows = []
    for _ in range(count):
        body = orjson.dumps(builder.build(items=2))
        decision = check_message(
            body=body,
            document=orjson.loads(body),
            caller=TRUST,
            providers=providers,
            request_id="r",
            clock=system_clock,
        )
        assert isinstance(decision, Acceptance)
        rows.append(decision.rows)
    return rows


def count(db: Database, table: str) -> int:
    with db.read() as session:
        return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


async def write_all(writer: BatchWriter, rows: list[NewPrescription]) -> list[object]:
    return await asyncio.gather(
        *(writer.run(partial(insert_prescription, new=new)) for new in rows), return_exceptions=True
    )


def test_prescriptions_written_in_one_batch_are_all_stored_with_every_row(sqlite: Database) -> None:
    writer = BatchWriter(sqlite)
    try:
        outcomes = asyncio.run(write_all(writer, accepted_rows(sqlite, 40)))
    finally:
        writer.close()
    assert outcomes == [None] * 40
    assert count(sqlite, "prescription") == 40
    assert count(sqlite, "prescription_item") == 80
    assert count(sqlite, "status_event") == 80
    assert count(sqlite, "outbox") == 40
    assert count(sqlite, "audit_event") == 40


def test_a_conflicting_prescription_fails_alone_and_its_neighbours_are_stored(sqlite: Database) -> None:
    rows = accepted_rows(sqlite, 10)
    writer = BatchWriter(sqlite)
    try:
        outcomes = asyncio.run(write_all(writer, [*rows[:5], rows[2], *rows[5:]]))
    finally:
        writer.close()
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], IntegrityError)
    assert count(sqlite, "prescription") == 10


def test_a_request_that_gave_up_waiting_does_not_stop_the_writer(sqlite: Database) -> None:
    rows = accepted_rows(sqlite, 3)
    writer = BatchWriter(sqlite)

    async def scenario() -> object:
        gate = asyncio.Event()

        def slow(connection: Connection) -> None:
            while not gate.is_set():
                pass
            insert_prescription(connection, new=rows[0])

        first = asyncio.ensure_future(writer.run(slow))
        abandoned = asyncio.ensure_future(writer.run(partial(insert_prescription, new=rows[1])))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        gate.set()
        await first
        return await asyncio.wait_for(writer.run(partial(insert_prescription, new=rows[2])), 10)

    try:
        assert asyncio.run(scenario()) is None
    finally:
        writer.close()
    assert count(sqlite, "prescription") == 3


TABLES = (
    ("audit_event", "resource_id"),
    ("outbox", "prescription_id"),
    ("status_event", "prescription_id"),
    ("prescription_item", "prescription_id"),
    ("prescription", "id"),
    ("inbound_message", "id"),
)
GENERATED = {"audit_event": {"id", "seq"}, "outbox": {"id"}, "status_event": {"id"}}


def stored(db: Database, prescription_id: str) -> dict[str, list[list[tuple[str, object]]]]:
    """Every column the prescription's write stored, except ids the database assigns."""
    found: dict[str, list[list[tuple[str, object]]]] = {}
    with db.read() as session:
        for table, key in TABLES:
            rows = session.execute(
                text(f"SELECT * FROM {table} WHERE {key} = :id"),
                {"id": prescription_id},
            ).mappings()
            found[table] = sorted(
                [
                    sorted(
                        (name, value) for name, value in row.items() if name not in GENERATED.get(table, ())
                    )
                    for row in rows
                ],
                key=repr,
            )
    return found


def test_the_bulk_insert_stores_exactly_what_the_core_insert_stores(db: Database) -> None:
    new = accepted_rows(db, 1, seed=11)[0]
    prescription_id = new.prescription["id"]
    with db.write_connection() as connection:
        insert_prescription(connection, new=new)
    by_core = stored(db, prescription_id)
    with db.write_connection() as connection:
        for table, key in TABLES:
            connection.execute(text(f"DELETE FROM {table} WHERE {key} = :id"), {"id": prescription_id})
        insert_prescriptions(connection, [new])
    assert stored(db, prescription_id) == by_core
    assert all(by_core[table] for table, _ in TABLES)
