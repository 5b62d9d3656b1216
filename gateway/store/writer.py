"""Group commit: one writer thread per process runs the writes of many requests in one transaction.

A busy intake path spends most of its database time beginning and committing transactions and
queueing for SQLite's single write lock. Requests hand their write (a function of a `Tx`) to
the `BatchWriter` and await it; the writer takes everything queued, runs the writes together, and
commits once. Each write is still all-or-nothing and still fails alone: if the batch fails, every
write in it is retried in a transaction of its own, so one conflicting request never takes its neighbours
down with it. Nothing is acknowledged before its commit; a request that gave up waiting (its client
went away) leaves its write to stand, and the writer goes on.

A write that only appends rows (`Rows`: the intake path's message, prescription, items, events,
outbox and audit rows) is not run alone: the rows of consecutive such writes of the same shape go in
together, one `executemany` per table per batch, the statements compiled once. That is the same
work in the same transaction (and the same one-by-one retry if any row conflicts), at a fraction of
the per-statement cost.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Dialect, Executable, Insert

from gateway.store.db import Database, Tx

T = TypeVar("T")
Write = Callable[[Tx], T]
MAX_BATCH = 128
_Outcome = tuple[bool, Any]  # (succeeded, the result or the exception)


@dataclass(frozen=True, slots=True)
class Rows:
    """A write that appends rows and reads nothing: `(statement, rows)` pairs, in the order they must
    go in (parents before children). Callable as any write; the writer batches it with its like."""

    inserts: tuple[tuple[Executable, list[dict[str, Any]]], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Which statements, in which order (by identity: the statements are built once, at import)."""
        return tuple(id(statement) for statement, _ in self.inserts)

    def __call__(self, tx: Tx) -> None:
        for statement, rows in self.inserts:
            insert_many(tx, statement, rows)


def insert_many(tx: Tx, statement: Executable, rows: list[dict[str, Any]]) -> None:
    """`statement` (a Core INSERT) once per row, as one `executemany`.

    On SQLite, where the write path runs its rows through Python alone, SQLAlchemy's per-row work
    (parameter construction, compiled-statement bookkeeping) costs more than the insert itself: the
    statement is compiled once per set of columns and each row's values go to the driver through the
    columns' own bind processors (the same conversions SQLAlchemy applies). Rows whose columns
    differ, and every other database, take SQLAlchemy's own path."""
    if not rows:
        return
    connection = tx.connection
    keys = tuple(rows[0])
    if connection.dialect.name != "sqlite" or any(len(row) != len(keys) for row in rows):
        connection.execute(statement, rows)
        return
    compiled = _compiled(statement, keys, connection.dialect)
    if compiled is None:
        connection.execute(statement, rows)
        return
    sql, processors = compiled
    try:
        values = [
            tuple(row[key] if process is None else process(row[key]) for key, process in processors)
            for row in rows
        ]
    except KeyError:  # a row with other columns than the first
        connection.execute(statement, rows)
        return
    connection.exec_driver_sql(sql, values)


_COMPILED: dict[tuple[int, tuple[str, ...], str], tuple[str, tuple[tuple[str, Any], ...]] | None] = {}


def _compiled(
    statement: Executable, keys: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[tuple[str, Any], ...]] | None:
    """The statement's SQL for these columns, with each positional parameter's column and bind
    processor; None when it is not a plain positional INSERT of exactly these columns."""
    cache_key = (id(statement), keys, dialect.name)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key]
    found: tuple[str, tuple[tuple[str, Any], ...]] | None = None
    if isinstance(statement, Insert):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        order = compiled.positiontup
        if compiled.positional and order is not None and sorted(order) == sorted(keys):
            columns = statement.table.c
            processors = tuple(
                (key, columns[key].type.dialect_impl(dialect).bind_processor(dialect)) for key in order
            )
            found = (compiled.string, processors)
    _COMPILED[cache_key] = found
    return found


@dataclass(slots=True)
class _Job(Generic[T]):
    write: Write[T]
    # `submit`'s callers wait on a thread future; `run`'s on their event loop, woken once per batch.
    future: Future[T] | None = None
    waiter: asyncio.Future[T] | None = None


class BatchWriter:
    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                if self._closed:
                    raise RuntimeError("the batch writer is closed")
                self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
                self._thread.start()

    def submit(self, write: Write[T]) -> Future[T]:
        self._ensure_started()
        future: Future[T] = Future()
        self._queue.put(_Job(write, future=future))
        return future

    async def run(self, write: Write[T]) -> T:
        """Run `write` in the next batch and return its result once committed."""
        self._ensure_started()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(write, waiter=waiter))
        return await waiter

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                batch.append(job)
            self._write_batch(batch)

    def _write_batch(self, batch: list[_Job[Any]]) -> None:
        try:
            with self._db.transaction() as tx:
                results = _run_together(tx, batch)
        except Exception:  # noqa: BLE001  (one bad write must not fail the others: retry each alone)
            self._write_one_by_one(batch)
            return
        _settle(batch, [(True, result) for result in results])

    def _write_one_by_one(self, batch: list[_Job[Any]]) -> None:
        # Each in a transaction of its own: one write's failure cannot touch another's.
        outcomes: list[_Outcome] = []
        for job in batch:
            try:
                with self._db.transaction() as tx:
                    outcomes.append((True, job.write(tx)))
            except Exception as exc:  # noqa: BLE001  (handed to the request that owns the write)
                outcomes.append((False, exc))
        _settle(batch, outcomes)


def _run_together(tx: Tx, batch: list[_Job[Any]]) -> list[Any]:
    """Every write of the batch in `tx`, in order; runs of `Rows` of one shape as one insert per table."""
    results: list[Any] = []
    pending: list[Rows] = []

    def flush() -> None:
        if not pending:
            return
        if len(pending) == 1:
            pending[0](tx)
        else:
            for index, (statement, _) in enumerate(pending[0].inserts):
                insert_many(tx, statement, [row for write in pending for row in write.inserts[index][1]])
        results.extend([None] * len(pending))
        pending.clear()

    for job in batch:
        write = job.write
        if isinstance(write, Rows):
            if pending and write.shape != pending[0].shape:
                flush()
            pending.append(write)
            continue
        flush()
        results.append(write(tx))
    flush()
    return results


def _settle(batch: list[_Job[Any]], outcomes: list[_Outcome]) -> None:
    """Hand each write its outcome: one wake-up per event loop for all the requests awaiting there."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
    for job, outcome in zip(batch, outcomes, strict=True):
        if job.waiter is not None:
            by_loop.setdefault(job.waiter.get_loop(), []).append((job.waiter, outcome))
        elif job.future is not None and job.future.set_running_or_notify_cancel():
            if outcome[0]:
                job.future.set_result(outcome[1])
            else:
                job.future.set_exception(outcome[1])
    for loop, waiting in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, waiting)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            continue


def _resolve(waiting: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for waiter, (succeeded, value) in waiting:
        if waiter.done():  # the request was cancelled; its write stands
            continue
        if succeeded:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)
