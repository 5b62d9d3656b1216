"""Transport hygiene: answers are not cached or sniffed, slow and half-open connections are closed,
and the embedded database is owner-only.

The slow clients are real sockets against a real uvicorn server run with the gateway's options.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.transport import uvicorn_options
from tests.support import PUBLIC_BASE_URL, RunningServer, Tenant, access_token

# Far longer than any deadline below: without deadlines the server would wait for ever.
PATIENCE_SECONDS = 8.0


def test_every_answer_says_no_store_and_nosniff(
    client: httpx.Client, server: RunningServer, db: Database
) -> None:
    anonymous = httpx.Client(base_url=server.base_url)
    answers = [
        client.get("/fhir/Task"),
        client.get("/fhir/Task/no-such-item"),
        client.post(
            "/fhir/$process-message", content=b"{", headers={"Content-Type": "application/fhir+json"}
        ),
        anonymous.get("/fhir/Task"),
        anonymous.get("/fhir/metadata"),
        anonymous.post("/auth/token", data={"grant_type": "client_credentials"}),
        anonymous.get("/no/such/path"),
    ]
    anonymous.close()
    for answer in answers:
        assert answer.headers.get_list("cache-control") == ["no-store"], answer.request.url
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"], answer.request.url


@pytest.fixture
def strict_server(database: Database, db: Database, tmp_path: Path) -> Iterator[RunningServer]:
    """The gateway under uvicorn with one-second header and body deadlines."""
    settings = Settings(
        data_dir=tmp_path,
        public_base_url=PUBLIC_BASE_URL,
        audit_seal_seconds=0,
        run_dispatcher=False,
        header_timeout_seconds=1,
        body_timeout_seconds=1,
    )
    with RunningServer(create_app(settings, db=database), **uvicorn_options(settings)) as running:
        yield running


def _connect(server: RunningServer) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port))
    connection.settimeout(PATIENCE_SECONDS)
    return connection


def _dribble(connection: socket.socket, data: bytes, stop: threading.Event) -> threading.Thread:
    """Send `data` one byte every 0.2 s until it is sent, the server hangs up, or `stop`."""

    def send() -> None:
        for byte in data:
            if stop.wait(0.2):
                return
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _read_until_closed(connection: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.monotonic(), b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def test_a_connection_that_sends_nothing_is_closed(strict_server: RunningServer) -> None:
    with _connect(strict_server) as connection:
        received, waited = _read_until_closed(connection)
    assert received == b""
    assert waited < PATIENCE_SECONDS


def test_headers_sent_a_byte_at_a_time_are_cut_off(strict_server: RunningServer) -> None:
    stop = threading.Event()
    with _connect(strict_server) as connection:
        _dribble(
            connection, b"GET /fhir/metadata HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * 200, stop
        )
        received, waited = _read_until_closed(connection)
        stop.set()
    assert received == b""
    assert waited < PATIENCE_SECONDS


def _slow_post(server: RunningServer, token: str | None) -> tuple[bytes, float]:
    body = b'{"resourceType": "Bundle", "type": "message"}' + b" " * 200
    head = (
        "POST /fhir/$process-message HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/fhir+json\r\n"
        f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n"
    ).encode()
    stop = threading.Event()
    with _connect(server) as connection:
        connection.sendall(head)
        _dribble(connection, body, stop)
        try:
            return _read_until_closed(connection)
        finally:
            stop.set()


def test_a_body_at_one_byte_a_moment_is_answered_408_and_the_connection_closed(
    strict_server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    received, waited = _slow_post(strict_server, access_token(strict_server, tenants["trust-rba"]))
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"connection: close" in received.lower()
    assert waited < PATIENCE_SECONDS


def test_a_slow_body_the_app_never_reads_is_cut_off_too(strict_server: RunningServer) -> None:
    # No token: the gateway answers 401 without reading the body, then must not wait for the rest.
    received, waited = _slow_post(strict_server, None)
    assert received.startswith(b"HTTP/1.1 401 "), received[:200]
    assert waited < PATIENCE_SECONDS


def test_the_sqlite_database_and_its_folder_are_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    database = Database(f"sqlite:///{folder / 'gateway.db'}")
    database.migrate()
    with database.write() as session:
        session.connection().exec_driver_sql("SELECT 1")
    files = [path for path in folder.iterdir() if path.name.startswith("gateway.db")]
    assert {path.name for path in files} >= {"gateway.db"}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    database.dispose()


def test_writers_in_other_processes_wait_on_the_writer_lock_file(tmp_path: Path) -> None:
    """A write transaction holds an exclusive flock of `<file>-writer` for as long as it runs, so
    another process's writer sleeps until it is free instead of retrying BEGIN IMMEDIATE."""
    path = tmp_path / "gateway.db"
    database = Database(f"sqlite:///{path}")
    database.migrate()
    other = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT, 0o600)  # as another process opens it
    try:
        with database.write_connection() as connection:
            connection.exec_driver_sql("SELECT 1")
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the transaction is over
        # ...and while another holds it, this process's writer waits for it.
        finished = threading.Event()

        def write() -> None:
            with database.write_connection() as connection:
                connection.exec_driver_sql("SELECT 1")
            finished.set()

        threading.Thread(target=write, daemon=True).start()
        assert not finished.wait(0.3), "a writer went ahead while another process held the lock"
        fcntl.flock(other, fcntl.LOCK_UN)
        assert finished.wait(5)
    finally:
        os.close(other)
        database.dispose()


def test_without_the_writer_lock_file_writers_still_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without flock: writers fall back to retrying BEGIN IMMEDIATE, nothing fails."""

    def no_flock(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    path = tmp_path / "gateway.db"
    database = Database(f"sqlite:///{path}")
    database.migrate()
    monkeypatch.setattr(fcntl, "flock", no_flock)
    try:
        for _ in range(2):
            with database.write_connection() as connection:
                connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
                connection.exec_driver_sql("INSERT INTO probe VALUES (1)")
        with database.snapshot() as tx:
            assert tx.connection.exec_driver_sql("SELECT count(*) FROM probe").scalar_one() == 2
    finally:
        database.dispose()


def test_an_existing_database_file_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
