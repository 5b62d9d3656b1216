"""Group commit: one writer thread per process runs the writes of many requests in one transaction.

A busy intake path spends most of its database time beginning and committing transactions and
queueing for SQLite's single write lock. Requests hand their write (a function of a `Tx`) to
the `BatchWriter` and await it; the writer takes everything queued, runs the writes together, and
commits once. Each write is still all-or-nothing and still fails alone: if the batch fails, every
write in it is retried in a transaction of its own, so one conflicting request never takes its neighbours
down with it. Nothing is acknowledged before its commit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway.store.db import Database, Tx

T = TypeVar("T")
Write = Callable[[Tx], T]
MAX_BATCH = 128


@dataclass(slots=True)
class _Job(Generic[T]):
    write: Write[T]
    future: Future[T] = field(default_factory=Future)


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
        job: _Job[T] = _Job(write)
        self._queue.put(job)
        return job.future

    async def run(self, write: Write[T]) -> T:
        """Run `write` in the next batch and return its result once committed."""
        return await asyncio.wrap_future(self.submit(write))

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
                results = [job.write(tx) for job in batch]
        except Exception:  # noqa: BLE001  (one bad write must not fail the others: retry each alone)
            self._write_one_by_one(batch)
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)

    def _write_one_by_one(self, batch: list[_Job[Any]]) -> None:
        # Each in a transaction of its own: one write's failure cannot touch another's.
        for job in batch:
            try:
                with self._db.transaction() as tx:
                    result = job.write(tx)
            except Exception as exc:  # noqa: BLE001  (handed to the request that owns the write)
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
