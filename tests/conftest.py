"""Shared fixtures: every integration test runs on SQLite and on PostgreSQL, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.clock import system_clock
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import DEV_TOKEN, FIXTURES, RunningServer, postgres_schema, require_postgres, wipe

DEFAULT_PROVIDERS = (
    ("VNCEL", "Test Homecare One"),
    ("VNFKT", "Test Homecare Two"),
    ("FCG71", "Test Homecare Three"),
)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated database on each backend, shared by the tests of a session and wiped between them."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gateway.db'}")
        db.migrate()
        yield db
        db.dispose()
        return
    require_postgres()
    with postgres_schema() as url:
        db = Database(url)
        db.migrate()
        yield db
        db.dispose()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        dev_token=DEV_TOKEN,
        log_json=True,
        provider_cache_seconds=0,
        run_dispatcher=False,
    )


@pytest.fixture(scope="session")
def server(database: Database, settings: Settings) -> Iterator[RunningServer]:
    with RunningServer(create_app(settings, db=database)) as running:
        yield running


@pytest.fixture
def db(database: Database) -> Database:
    """The session's database, emptied and given the default providers."""
    wipe(database)
    with database.write() as session:
        for ods, name in DEFAULT_PROVIDERS:
            add_provider(
                session, ods_code=ods, name=name, adapter="fhir-rest", settings={}, now=system_clock()
            )
    return database


@pytest.fixture
def client(server: RunningServer, db: Database) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {DEV_TOKEN}"}, timeout=30
    ) as http:
        yield http


@pytest.fixture(scope="session")
def eps_fixtures() -> Path:
    folder = FIXTURES / "eps"
    if not folder.is_dir():
        pytest.skip(f"shared EPS fixtures not present at {folder}")
    return folder
