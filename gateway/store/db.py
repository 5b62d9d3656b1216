"""The database handle: engines for SQLite (embedded default) and PostgreSQL (scale), transactions
and migrations. The rest of the gateway reaches the tables only through the store's repositories,
which take the `Tx` a transaction hands out; database errors leave the store as `StoreError`s.

SQLite runs in WAL mode with `synchronous=NORMAL`. It has one writer at a time, so a process's
writers queue on a lock of their own and each write transaction starts with `BEGIN IMMEDIATE`
(never a read lock that fails to upgrade). Between processes, the gateway's writers queue on an
exclusive `flock` of a file beside the database (`<file>-writer`): a waiting writer sleeps in the
kernel until the one before it is done. A writer that does not take it (the `sqlite3` shell, say)
is waited for by retrying `BEGIN IMMEDIATE` every fraction of a millisecond rather than through
SQLite's busy handler, whose sleeps grow to 100 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session

from gateway.store.errors import AlreadyStored, StoreUnavailable

_MIGRATIONS = Path(__file__).with_name("migrations")
_WRITE_LOCK_TIMEOUT = 30.0
_log = logging.getLogger(__name__)
_SQLITE_MMAP_BYTES = 256 * 1024 * 1024
_SQLITE_WRITER_CACHE_KIB = 32 * 1024


def normalise_url(url: str) -> URL:
    """Accept the usual spellings (`postgres://`, `postgresql://`) and pick our drivers."""
    parsed = make_url(
        url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


@dataclass(frozen=True, slots=True)
class Tx:
    """One database transaction, as the repositories take it. Opaque outside the store.

    `locks_rows`: whether a read meant for a change should lock its rows (`FOR UPDATE` on
    PostgreSQL); SQLite has a single writer, whose transaction already excludes every other.
    """

    connection: Connection
    locks_rows: bool


@contextmanager
def translate_errors() -> Iterator[None]:
    """Database errors become the store's own before they leave it."""
    try:
        yield
    except IntegrityError as exc:
        raise AlreadyStored(_constraint_of(exc)) from exc
    except SQLAlchemyError as exc:
        raise StoreUnavailable(type(exc).__name__) from exc


def _constraint_of(exc: IntegrityError) -> str | None:
    diagnostics = getattr(exc.orig, "diag", None)
    name = getattr(diagnostics, "constraint_name", None)
    if name:
        return str(name)
    text_of_error = str(exc.orig)
    return text_of_error.partition("constraint failed: ")[2] or None


def database_problem(exc: BaseException) -> str | None:
    """One line an operator can act on when `exc` says the configured database cannot be used."""
    if isinstance(exc, sqlalchemy_errors.ArgumentError):
        return (
            "DATABASE_URL is not a database URL this gateway can use: give sqlite:///path/to/file.db "
            "or postgresql://user@host:5432/name"
        )
    if isinstance(exc, sqlalchemy_errors.OperationalError | sqlalchemy_errors.InterfaceError):
        reason = (str(exc.orig) if exc.orig is not None else str(exc)).strip().splitlines()
        return (
            f"The database cannot be reached or opened ({reason[0][:200] if reason else 'no reason given'}): "
            "check DATABASE_URL (or HOMECARE_DATA_DIR for the embedded database) and that the server runs"
        )
    return None


def _owner_only_file(path: Path) -> None:
    """The SQLite file holds patient data: owner-only (0600), in a folder made owner-only (0700) when
    this creates it. SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Only a file this creates is opened here: closing any other descriptor of a database file would
    # drop the locks this process's SQLite connections hold on it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    path.chmod(0o600)


class _WriterFileLock:
    """The gateway's writers to one SQLite file, across processes, one at a time: an exclusive
    `flock` of a file beside the database, taken (blocking, the GIL released) before `BEGIN
    IMMEDIATE`. Measured with two workers under intake load, retrying `BEGIN IMMEDIATE` instead
    cost a tenth of a millisecond of CPU per prescription. Held only inside the process's own
    writer lock, so one descriptor per process serves every thread; the kernel drops it if the
    process dies. Where it cannot be had (a file system without `flock`, a folder this process may
    not create files in), writers wait by retrying `BEGIN IMMEDIATE` alone, as before."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._descriptor: int | None = None
        self._pid = 0
        self._held = False
        self.unavailable = False

    def __enter__(self) -> None:
        if self.unavailable:
            return
        try:
            if self._descriptor is None or self._pid != os.getpid():  # a forked child opens its own
                self._descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        except OSError as exc:
            self.unavailable = True
            _log.warning(
                "sqlite_writer_lock_unavailable", extra={"reason": exc.strerror or type(exc).__name__}
            )
            return
        self._held = True

    def __exit__(self, *_: object) -> None:
        if self._held and self._descriptor is not None:
            self._held = False
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._descriptor is not None and self._pid == os.getpid():
            os.close(self._descriptor)
        self._descriptor = None


class Database:
    """Engines and sessions for one database. On PostgreSQL reads and writes share one engine."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._writer_file_lock: _WriterFileLock | None = None
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                _owner_only_file(Path(database))
                self._writer_file_lock = _WriterFileLock(Path(f"{database}-writer"))
            self.engine = self._sqlite_engine(writer=False, pool_size=pool_size)
            self.write_engine = self._sqlite_engine(writer=True, pool_size=pool_size)
        else:
            self.engine = create_engine(
                self.url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True
            )
            self.write_engine = self.engine

    def _sqlite_engine(self, *, writer: bool, pool_size: int) -> Engine:
        engine = create_engine(
            self.url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=2 * pool_size,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the driver so that BEGIN is ours to choose.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={0 if writer else 30000}")
            # Pages read through a memory map, not a system call each; the writer keeps the pages
            # it works on (the tables' and indexes' growing ends) in a cache of its own.
            cursor.execute(f"PRAGMA mmap_size={_SQLITE_MMAP_BYTES}")
            if writer:
                cursor.execute(f"PRAGMA cache_size=-{_SQLITE_WRITER_CACHE_KIB}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            if writer:
                _begin_immediate(connection.connection.dbapi_connection)
            else:
                connection.exec_driver_sql("BEGIN")

        return engine

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction: committed when the block ends, rolled back on any error."""
        with translate_errors(), self.write_connection() as connection:
            yield Tx(connection, locks_rows=not self.is_sqlite)

    @contextmanager
    def snapshot(self) -> Iterator[Tx]:
        """A read-only transaction (one consistent view on PostgreSQL and SQLite alike)."""
        with translate_errors(), self.engine.connect() as connection, connection.begin():
            yield Tx(connection, locks_rows=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with (
            self._writer_turn(),
            Session(self.write_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core connection in a write transaction (commit on success), for the batch writer."""
        with self._writer_turn(), self.write_engine.begin() as connection:
            yield connection

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite: this process's writer lock, then the file's (other processes' writers)."""
        with (
            self._write_lock if self._write_lock is not None else nullcontext(),
            self._writer_file_lock if self._writer_file_lock is not None else nullcontext(),
        ):
            yield

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe to run on every start)."""
        self.alembic("upgrade", "head")

    def alembic(self, action: str, revision: str) -> None:
        """Run an Alembic command (`upgrade`, `downgrade`) to `revision` on this database."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.write_engine.connect() as connection:
            if self.is_sqlite:
                # SQLite alters a table by copying it, which foreign keys would forbid; they are switched
                # off outside the transaction (the only place SQLite allows it) and checked after.
                connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            try:
                with connection.begin():
                    if not self.is_sqlite:
                        # Several processes may start at once; one migrates, the others wait and find it done.
                        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
                    config.attributes["connection"] = connection
                    getattr(command, action)(config, revision)
                    if self.is_sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                        raise RuntimeError("the migration left rows whose foreign keys do not resolve")
            finally:
                if self.is_sqlite:
                    connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
        if self._writer_file_lock is not None:
            self._writer_file_lock.close()


def _begin_immediate(dbapi_connection: sqlite3.Connection) -> None:
    """Take SQLite's write lock, waiting for another process's writer in short, jittered steps."""
    deadline = time.monotonic() + _WRITE_LOCK_TIMEOUT
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.0001, 0.0005))  # noqa: S311  (jitter, not security)


@contextmanager
def throwaway_schema(url: str, prefix: str = "scratch") -> Iterator[str]:
    """A new PostgreSQL schema, dropped with everything in it afterwards (for tests and benchmarks).

    Yields `url` with the connection's search_path set to that schema.
    """
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(url))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
