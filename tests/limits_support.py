"""A gateway of its own for tests of rate limits and refused requests (their counts live in the
server process), on the session's database, with a frozen clock so that no count window closes
while a test runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.db import Database
from tests.support import RunningServer, with_test_resolver

StartGateway = Callable[..., RunningServer]


@pytest.fixture
def start_gateway(database: Database, db: Database, settings: Settings) -> Iterator[StartGateway]:
    """Start a gateway with some settings changed; each is stopped at the end of the test."""
    frozen = datetime.now(UTC)
    with ExitStack() as stack:

        def start(*, database_: Database | None = None, **changes: Any) -> RunningServer:
            changes = {"refusal_audit_window_seconds": 60.0, **changes}
            app = create_app(
                settings.model_copy(update=changes), db=database_ or database, clock=lambda: frozen
            )
            return stack.enter_context(RunningServer(with_test_resolver(app)))

        yield start


def from_address(server: RunningServer, address: str, **options: Any) -> httpx.Client:
    """An HTTP client whose connections come from `address` (any of 127.0.0.0/8 on Linux)."""
    return httpx.Client(
        base_url=server.base_url, transport=httpx.HTTPTransport(local_address=address), timeout=30, **options
    )


def refusal_rows(db: Database) -> list[dict[str, Any]]:
    """The audit rows the request middleware wrote for refused requests, oldest first."""
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT * FROM audit_event WHERE action = 'request' ORDER BY id",
            )
        ).all()
    return [dict(row._mapping) for row in rows]
