"""The batch writer (group commit): every write keeps its own outcome, and a request that stops
waiting never stops the writer; rows of many writes go in as one statement per table."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    event,
    insert,
    text,
)
from sqlalchemy.exc import StatementError

from gateway.store.db import Database, Tx
from gateway.store.errors import AlreadyStored, StoreUnavailable
from gateway.store.types import UTCDateTime
from gateway.store.writer import BatchWriter, Rows, insert_many


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


_PROVIDER = Table(
    "provider",
    MetaData(),
    *(
        Column(name)
        for name in ("ods_code", "name", "adapter", "settings", "enabled", "created_at", "updated_at")
    ),
)
_INSERT_PROVIDER = insert(_PROVIDER)


def provider_rows(*ods_codes: str) -> Rows:
    """A `Rows` write of providers (one table: enough to see the statements the writer runs)."""
    values = [
        {
            "ods_code": ods,
            "name": "p",
            "adapter": "fhir-rest",
            "settings": "{}",
            "enabled": 1,
            "created_at": "2026-11-30 00:00:00",
            "updated_at": "2026-11-30 00:00:00",
        }
        for ods in ods_codes
    ]
    return Rows(((_INSERT_PROVIDER, values),))


def statements_run(db: Database) -> list[str]:
    seen: list[str] = []

    @event.listens_for(db.write_engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT"):
            seen.append(statement)

    return seen


def test_rows_of_many_writes_go_in_as_one_statement_per_table(sqlite: Database) -> None:
    writer = BatchWriter(sqlite)
    gate = threading.Event()
    seen = statements_run(sqlite)

    async def scenario() -> list[object]:
        blocker = asyncio.ensure_future(writer.run(lambda tx: gate.wait(10)))
        await asyncio.sleep(0.05)  # the writer is busy: the next writes queue up into one batch
        writes = [asyncio.ensure_future(writer.run(provider_rows(f"R{n:02}", f"S{n:02}"))) for n in range(10)]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return list(await asyncio.gather(*writes))

    try:
        assert asyncio.run(scenario()) == [None] * 10
    finally:
        writer.close()
    assert len(seen) == 1, "ten writes of one shape, one INSERT"
    assert len(stored(sqlite)) == 20


def test_a_conflicting_rows_write_fails_alone(sqlite: Database) -> None:
    writer = BatchWriter(sqlite)
    gate = threading.Event()

    async def scenario() -> list[object]:
        blocker = asyncio.ensure_future(writer.run(lambda tx: gate.wait(10)))
        await asyncio.sleep(0.05)
        writes = [
            asyncio.ensure_future(writer.run(provider_rows(*codes)))
            for codes in (("C01", "C02"), ("C03", "C01"), ("C04",))
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return list(await asyncio.gather(*writes, return_exceptions=True))

    try:
        outcomes = asyncio.run(scenario())
    finally:
        writer.close()
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], AlreadyStored)
    assert stored(sqlite) == ["C01", "C02", "C04"], "the conflicting write left none of its rows"


_TYPED = Table(
    "typed",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String),
    Column("at", UTCDateTime),
    Column("detail", JSON),
    Column("body", LargeBinary),
    Column("flag", Boolean),
)
_INSERT_TYPED = insert(_TYPED)


def typed_rows() -> list[dict[str, Any]]:
    return [
        {
            "id": n,
            "name": f"row {n}",
            "at": datetime(2026, 11, 30, 12, 0, n, 1234, tzinfo=UTC) if n % 2 else None,
            "detail": {"n": n, "list": [1, "two"]} if n % 3 else None,
            "body": bytes([n]) * 3,
            "flag": n % 2 == 0,
        }
        for n in range(1, 7)
    ]


def stored_as(tmp_path: Path, name: str, write: Callable[[Tx, list[dict[str, Any]]], None]) -> list[Any]:
    """The rows as SQLite keeps them (read without any type's processing)."""
    db = Database(f"sqlite:///{tmp_path / name}")
    _TYPED.metadata.create_all(db.write_engine)
    with db.transaction() as tx:
        write(tx, typed_rows())
    with db.snapshot() as tx:
        return [tuple(row) for row in tx.connection.execute(text("SELECT * FROM typed ORDER BY id"))]


def test_rows_go_to_the_driver_converted_as_sqlalchemy_converts_them(tmp_path: Path) -> None:
    by_sqlalchemy = stored_as(
        tmp_path, "a.db", lambda tx, rows: tx.connection.execute(_INSERT_TYPED, rows) and None
    )
    by_writer = stored_as(tmp_path, "b.db", lambda tx, rows: insert_many(tx, _INSERT_TYPED, rows))
    assert by_writer == by_sqlalchemy
    assert by_writer[0][2] is not None and by_writer[1][3] is not None, "datetimes and JSON were written"


@pytest.mark.parametrize("shape", ["fewer columns", "as many, other columns"])
def test_rows_with_other_columns_than_the_first_are_refused_as_sqlalchemy_refuses_them(
    tmp_path: Path, shape: str
) -> None:
    def mixed(tx: Tx, rows: list[dict[str, Any]]) -> None:
        if shape == "fewer columns":
            rows[1] = {"id": rows[1]["id"], "name": "short"}
        else:  # every row without its flag, but the second without its body instead
            for row in rows:
                row.pop("flag")
            rows[1]["flag"] = rows[1].pop("body")
        insert_many(tx, _INSERT_TYPED, rows)

    with pytest.raises(StoreUnavailable) as refused:
        stored_as(tmp_path, "c.db", mixed)
    assert isinstance(refused.value.__cause__, StatementError)
    assert "A value is required for bind parameter" in str(refused.value.__cause__)
