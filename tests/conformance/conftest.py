"""Our own gateway, served for real, with the conformance suite's clients registered the way an
operator registers any vendor's: providers whose fhir-rest endpoint is the suite, and four clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from auth.clients import KeySource, add_client
from auth.identity import Role
from conformance.setup import DEFAULT_CLIENTS, write_gateway_config
from gateway.app import create_app
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import RunningServer, free_port, postgres_schema, require_postgres


@dataclass(frozen=True)
class SuiteTarget:
    """A gateway the suite can run against, and the configuration file naming its clients."""

    url: str
    config: Path
    database: Database


def register_suite_clients(database: Database, folder: Path, provider_listen: str) -> None:
    now = datetime.now(UTC)
    with database.write() as session:
        for spec in DEFAULT_CLIENTS:
            if spec.role == "provider":
                settings = {"base_url": f"http://{provider_listen}/fhir", "timeout_seconds": 5.0}
                add_provider(
                    session,
                    ods_code=spec.ods,
                    name=spec.client_id,
                    adapter="fhir-rest",
                    settings=settings,
                    now=now,
                )
        for spec in DEFAULT_CLIENTS:
            jwks = json.loads(spec.key_stem(folder).with_suffix(".jwks.json").read_text(encoding="utf-8"))
            add_client(
                session,
                client_id=spec.client_id,
                role=Role(spec.role),
                ods_code=spec.ods,
                scopes=spec.scopes,
                keys=KeySource(jwks=jwks, jwks_url=None),
                now=now,
            )


def serve_gateway(database: Database, folder: Path) -> Iterator[SuiteTarget]:
    port, provider_port = free_port(), free_port()
    provider_listen = f"127.0.0.1:{provider_port}"
    config = write_gateway_config(folder, provider_listen)
    database.migrate()
    register_suite_clients(database, folder, provider_listen)
    settings = Settings(
        data_dir=folder / "data",
        public_base_url=f"http://127.0.0.1:{port}",
        audit_seal_seconds=0,
        jwks_refresh_seconds=0,
        provider_cache_seconds=0,
        dispatch_poll_seconds=0.05,
        retry_base_seconds=0.2,
        retry_cap_seconds=1.0,
        breaker_cooldown_seconds=1.0,
        # CANCEL-01 holds an order with 503s until its cancel arrives; on a loaded machine that can be
        # five failures, and an open breaker would then delay the release past the suite's 20 s wait.
        breaker_threshold=50,
        cancel_wait_seconds=5,
        log_level="WARNING",
        # The suite's subscriber listens on loopback over plain http.
        allow_loopback_subscribers=True,
    )
    with RunningServer(create_app(settings, db=database), port=port) as server:
        yield SuiteTarget(server.base_url, config, database)


@pytest.fixture(scope="module")
def gateway_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteTarget]:
    """Our gateway on SQLite, with the suite's providers and clients registered."""
    folder = tmp_path_factory.mktemp("suite-sqlite")
    database = Database(f"sqlite:///{folder / 'gateway.db'}")
    yield from serve_gateway(database, folder)
    database.dispose()


@pytest.fixture(scope="module")
def postgres_gateway_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteTarget]:
    require_postgres()
    folder = tmp_path_factory.mktemp("suite-postgres")
    with postgres_schema() as url:
        database = Database(url)
        yield from serve_gateway(database, folder)
        database.dispose()
