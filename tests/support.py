"""Test helpers: a real gateway on a real socket, databases on both backends, the EPS fixtures."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from gateway.store.db import Database

POSTGRES_URL = os.environ.get(
    "HOMECARE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
DEV_TOKEN = "test-development-token"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def postgres_available() -> str | None:
    """None when PostgreSQL answers; otherwise why not."""
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def require_postgres() -> None:
    problem = postgres_available()
    if problem is None:
        return
    message = f"PostgreSQL is not reachable at 127.0.0.1:5432 (database 'test'): {problem}"
    if in_ci():
        pytest.fail(message + " -- CI=true requires it")
    pytest.skip(message + " -- set CI=true to make this a failure")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A throw-away schema in the test database; yields a URL whose search_path is that schema."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """A uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


TABLES_IN_DELETE_ORDER = (
    "outbox",
    "status_event",
    "prescription_item",
    "prescription",
    "inbound_message",
    "provider",
)


def wipe(database: Database) -> None:
    with database.write() as session:
        for table in TABLES_IN_DELETE_ORDER:
            session.execute(text(f"DELETE FROM {table}"))
