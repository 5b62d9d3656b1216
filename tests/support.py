"""Test helpers: a real gateway on a real socket, databases on both backends, the EPS fixtures."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from joserfc.jwk import Key
from sqlalchemy import create_engine, text
from starlette.applications import Starlette

from auth.assertion import ASSERTION_TYPE, generate_client_key, private_key, sign_assertion
from auth.clients import KeySource, add_client
from auth.identity import Role
from gateway.notify.endpoints import StaticResolver
from gateway.store.db import Database, throwaway_schema

POSTGRES_URL = os.environ.get(
    "HOMECARE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
# The address the gateway publishes: assertions name its token URL, whatever port the test server has.
PUBLIC_BASE_URL = "https://homecare-gateway.test"
TOKEN_URL = f"{PUBLIC_BASE_URL}/auth/token"
TRUST_SCOPES = (
    "system/MedicationRequest.c system/MedicationRequest.u system/MedicationRequest.rs "
    "system/Task.rs system/Subscription.crud"
)
PROVIDER_SCOPES = "system/MedicationRequest.rs system/MedicationDispense.c system/Task.rs system/Task.cu"
CLINICIAN_APP_SCOPES = "system/MedicationRequest.rs system/Task.rs"


# Subscriber host names the tests use, and a public address for them: the gateway resolves every
# endpoint, and there is no DNS in a test (none of these ever receives a connection).
SUBSCRIBER_HOSTS = StaticResolver(
    {
        "ehr.rba.example.nhs.uk": ["8.8.8.8"],
        "ehr.example.nhs.uk": ["8.8.8.8"],
        "ehr.example": ["2001:4860:4860::8888"],
        "localhost": ["127.0.0.1", "::1"],
    }
)


def with_test_resolver(app: FastAPI) -> FastAPI:
    """The app, resolving subscriber endpoints with SUBSCRIBER_HOSTS instead of DNS."""
    app.state.services = replace(app.state.services, endpoint_resolver=SUBSCRIBER_HOSTS)
    return app


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


def postgres_schema() -> AbstractContextManager[str]:
    """A throw-away schema in the test database; yields a URL whose search_path is that schema."""
    return throwaway_schema(POSTGRES_URL, "t")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """A uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: FastAPI | Starlette, *, port: int | None = None, **options: Any) -> None:
        """`options` go to uvicorn.Config (e.g. gateway.transport.uvicorn_options(settings))."""
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, **options
        )
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
    "run_out_alert",
    "run_out_due",
    "kpi_monthly",
    "kpi_restatement",
    "kpi_fold",
    "outbox",
    "subscription",
    "audit_event",
    "used_jti",
    "client",
    "status_event",
    "query_message",
    "medication_dispense",
    "provider_message",
    "prescription_item",
    "prescription",
    "inbound_message",
    "provider",
)


def wipe(database: Database) -> None:
    with database.write() as session:
        for table in TABLES_IN_DELETE_ORDER:
            session.execute(text(f"DELETE FROM {table}"))


@dataclass(frozen=True)
class ClientKey:
    """A client's key pair as a test holds it: the private key signs, the JWKS is registered."""

    private: Key
    kid: str
    algorithm: str
    jwks: dict[str, Any]

    @classmethod
    def generate(cls, algorithm: str = "ES384") -> ClientKey:
        pair = generate_client_key(algorithm)
        return cls(private_key(pair.private_pem), pair.kid, algorithm, pair.jwks)

    def assertion(self, client_id: str, **overrides: Any) -> str:
        """A valid assertion for the test gateway; keyword arguments override what sign_assertion gets."""
        arguments: dict[str, Any] = {
            "key": self.private,
            "kid": self.kid,
            "client_id": client_id,
            "token_url": TOKEN_URL,
            "now": int(time.time()),
            "algorithm": self.algorithm,
        }
        arguments.update(overrides)
        return sign_assertion(**arguments)


@dataclass(frozen=True)
class Tenant:
    """A registered client, for tests that act as one."""

    client_id: str
    role: Role
    ods_code: str
    scopes: str
    key: ClientKey


def register(db: Database, tenant: Tenant) -> None:
    with db.write() as session:
        add_client(
            session,
            client_id=tenant.client_id,
            role=tenant.role,
            ods_code=tenant.ods_code,
            scopes=tenant.scopes,
            keys=KeySource(jwks=tenant.key.jwks, jwks_url=None),
            now=datetime.now(UTC),
        )


def token_request(http: httpx.Client, assertion: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **form,
    }
    return http.post("/auth/token", data=data)


def access_token(server: RunningServer, tenant: Tenant, scope: str | None = None) -> str:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        response = token_request(
            http, tenant.key.assertion(tenant.client_id), **({"scope": scope} if scope else {})
        )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def http_as(server: RunningServer, tenant: Tenant, scope: str | None = None) -> httpx.Client:
    token = access_token(server, tenant, scope)
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
