"""The batch writer (group commit): every write keeps its own outcome, and a request that stops
waiting never stops the writer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.store.db import Database, Tx
from gateway.store.errors import AlreadyStored
from gateway.store.writer import BatchWriter


@pytest.fixture
def sqlite(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    database.migrate()
    return database


def add_provider(ods: str) -> Callable[[Tx], str]:
    def write(tx: Tx) -> str:
        tx.connection.execute(
            text(
                "INSERT INTO provider (ods_code, name, adapter, settings, enabled, created_at, updated_at) "
                "VALUES (:ods, 'p', 'fhir-rest', '{}', 1, '2026-11-30 00:00:00', '2026-11-30 00:00:00')"
            ),
            {"ods": ods},
        )
        return ods

    return write


def stored(db: Database) -> list[str]:
    with db.snapshot() as tx:
        return [
            row.ods_code for row in tx.connection.execute(text("SELECT ods_code FROM provider ORDER BY 1"))
        ]


def test_writes_of_one_batch_each_get_their_own_result(sqlite: Database) -> None:
    writer = BatchWriter(sqlite)

    async def all_of_them() -> list[str]:
        return list(await asyncio.gather(*(writer.run(add_provider(f"P{n:03}")) for n in range(40))))

    try:
        assert asyncio.run(all_of_them()) == [f"P{n:03}" for n in range(40)]
    finally:
        writer.close()
    assert len(stored(sqlite)) == 40


def test_a_conflicting_write_fails_alone_and_its_neighbours_are_stored(sqlite: Database) -> None:
    writer = BatchWriter(sqlite)
    names = ["A01", "A02", "A01", "A03"]

    async def all_of_them() -> list[object]:
        return list(
            await asyncio.gather(*(writer.run(add_provider(n)) for n in names), return_exceptions=True)
        )

    try:
        outcomes = asyncio.run(all_of_them())
    finally:
        writer.close()
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], AlreadyStored)
    assert stored(sqlite) == ["A01", "A02", "A03"]


def test_a_request_that_gave_up_waiting_does_not_stop_the_writer(sqlite: Database) -> None:
    writer = BatchWriter(sqlite)
    gate = threading.Event()

    def slow(tx: Tx) -> str:
        gate.wait(10)
        return add_provider("B01")(tx)

    async def scenario() -> str:
        first = asyncio.ensure_future(writer.run(slow))
        abandoned = asyncio.ensure_future(writer.run(add_provider("B02")))
        await asyncio.sleep(0.05)
        abandoned.cancel()  # its client went away while the write was queued
        gate.set()
        await first
        return await asyncio.wait_for(writer.run(add_provider("B03")), 10)

    try:
        assert asyncio.run(scenario()) == "B03"
    finally:
        writer.close()
    assert stored(sqlite) == ["B01", "B02", "B03"], "the abandoned write still stands"
