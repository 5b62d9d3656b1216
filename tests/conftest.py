"""Shared fixtures: every integration test runs on SQLite and on PostgreSQL, over real HTTP."""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import structlog

from auth.identity import Role
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import (
    CLINICIAN_APP_SCOPES,
    FIXTURES,
    PROVIDER_SCOPES,
    PUBLIC_BASE_URL,
    TRUST_SCOPES,
    ClientKey,
    RunningServer,
    Tenant,
    http_as,
    postgres_schema,
    register,
    require_postgres,
    wipe,
    with_test_resolver,
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under mutmut only (scripts/mutants.py): the fastest tests first. mutmut stops a mutant's run at
    its first failing test, so a quick test that catches the mutant spares the end-to-end tests, which
    only fail once their wait for the broken behaviour runs out. The order changes nothing else: every
    test stands alone (the `db` fixture empties the database)."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    stats = Path("mutmut-stats.json")  # mutmut runs the tests in its mutants/ folder, beside its stats
    if not stats.is_file():
        return
    durations: dict[str, float] = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


DEFAULT_PROVIDERS = (
    ("VNCEL", "Test Homecare One"),
    ("VNFKT", "Test Homecare Two"),
    ("FCG71", "Test Homecare Three"),
)


# mutmut runs each mutant's tests in a pytest session forked from a process that has run them all
# before. Two things make such a session start and end in less time (one session, as `make test`
# runs, gains nothing and loses nothing): the migrated empty SQLite database of the first session,
# copied instead of migrated again, and the objects already
# there frozen, so that pytest's garbage collections at the end of a session skip them.
_migrated_sqlite: list[bytes] = []


def _image_of_sqlite(path: Path) -> bytes:
    with closing(sqlite3.connect(path)) as migrated, closing(sqlite3.connect(":memory:")) as memory:
        migrated.backup(memory)
        return memory.serialize()


def pytest_configure(config: pytest.Config) -> None:
    gc.freeze()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A migrated database on each backend, shared by the tests of a session and wiped between them."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "gateway.db"
        db = Database(f"sqlite:///{path}")
        if _migrated_sqlite:
            path.write_bytes(_migrated_sqlite[0])
        else:
            db.migrate()
            _migrated_sqlite.append(_image_of_sqlite(path))
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
    # The audit sealer and the KPI fold are off: tests seal and fold when they mean to.
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        public_base_url=PUBLIC_BASE_URL,
        log_json=True,
        audit_seal_seconds=0,
        kpi_fold_seconds=0,
        run_out_check_seconds=0,
        jwks_refresh_seconds=0,
        provider_cache_seconds=0,
        run_dispatcher=False,
        allow_loopback_subscribers=True,
        # Status folders are read by the runtimes the adapter tests start, not by this shared server.
        poll_status_folders=False,
        # Every refusal its own audit row: the tests sharing this server must not see each other's
        # refusals counted into one (tests/test_refusal_audit.py starts servers that coalesce).
        refusal_audit_window_seconds=1e-6,
    )


@pytest.fixture(scope="session")
def server(database: Database, settings: Settings) -> Iterator[RunningServer]:
    with RunningServer(with_test_resolver(create_app(settings, db=database))) as running:
        yield running


@pytest.fixture(scope="session")
def tenants() -> dict[str, Tenant]:
    """The registered clients of every test: two trusts, two providers, a clinician app."""
    return {
        tenant.client_id: tenant
        for tenant in (
            Tenant("trust-rba", Role.TRUST, "RBA", TRUST_SCOPES, ClientKey.generate("ES384")),
            Tenant("trust-rbb", Role.TRUST, "RBB", TRUST_SCOPES, ClientKey.generate("RS384")),
            Tenant("provider-vncel", Role.PROVIDER, "VNCEL", PROVIDER_SCOPES, ClientKey.generate("ES256")),
            Tenant("provider-vnfkt", Role.PROVIDER, "VNFKT", PROVIDER_SCOPES, ClientKey.generate("ES384")),
            Tenant(
                "clinician-app-rba",
                Role.CLINICIAN_APP,
                "RBA",
                CLINICIAN_APP_SCOPES,
                ClientKey.generate("ES384"),
            ),
        )
    }


@pytest.fixture
def db(database: Database, tenants: dict[str, Tenant]) -> Database:
    """The session's database, emptied and given the default providers and clients."""
    wipe(database)
    with database.write() as session:
        for ods, name in DEFAULT_PROVIDERS:
            add_provider(
                session, ods_code=ods, name=name, adapter="fhir-rest", settings={}, now=system_clock()
            )
    for tenant in tenants.values():
        register(database, tenant)
    return database


@pytest.fixture
def as_tenant(
    server: RunningServer, db: Database, tenants: dict[str, Tenant]
) -> Iterator[Callable[..., httpx.Client]]:
    """HTTP clients holding a real access token of the named client (optionally fewer scopes)."""
    opened: list[httpx.Client] = []

    def open_as(client_id: str, scope: str | None = None) -> httpx.Client:
        http = http_as(server, tenants[client_id], scope)
        opened.append(http)
        return http

    yield open_as
    for http in opened:
        http.close()


@pytest.fixture
def client(as_tenant: Callable[..., httpx.Client]) -> httpx.Client:
    """The trust RBA's system, with every trust scope: the sender of the builder's messages."""
    return as_tenant("trust-rba")


@pytest.fixture(scope="session")
def eps_fixtures() -> Path:
    folder = FIXTURES / "eps"
    if not folder.is_dir():
        pytest.skip(f"shared EPS fixtures not present at {folder}")
    return folder


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put logging back as it was after a test that sets it up as `serve` does: its handler writes to
    this test's output capture, which is closed once the session ends (mutmut runs a second session
    in the same process, where every log line would then print a logging error into the CLI output)."""
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    saved = (structlog.get_config(), root.handlers[:], root.level, httpx_logger.level)
    yield
    structlog.configure(**saved[0])
    root.handlers[:] = saved[1]
    root.setLevel(saved[2])
    httpx_logger.setLevel(saved[3])
