"""Fixtures of the clinician page tests: the pages on their own server (published over plain http,
as a browser on this machine reaches them) sharing the database of the API server the tests drive
as trusts and providers; both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.db import Database
from tests.support import RunningServer, free_port
from tests.web.support import add_people


def web_settings(port: int, data_dir: object, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "public_base_url": f"http://127.0.0.1:{port}",
        "audit_seal_seconds": 0,
        "run_out_check_seconds": 0,
        "kpi_fold_seconds": 0,
        "provider_cache_seconds": 0,
        "run_dispatcher": False,
        "cancel_wait_seconds": 0.3,
        "web_live_poll_seconds": 1.0,
        "web_page_size": 5,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def web_server(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    port = free_port()
    settings = web_settings(port, tmp_path_factory.mktemp("web"))
    with RunningServer(create_app(settings, db=database), port=port) as running:
        yield running


@pytest.fixture
def web(db: Database, web_server: RunningServer) -> RunningServer:
    """The pages' server, its database emptied and given two clinicians: alice (RBA) and bob (RBB)."""
    add_people(db)
    return web_server
