"""The committed OpenAPI document matches the code, and schemathesis finds no 5xx and no
response outside the documented schemas (statuses, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks

from auth.identity import Role
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.openapi_export import render_openapi
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import ASSERTION_TYPE, PUBLIC_BASE_URL, TRUST_SCOPES, ClientKey, Tenant, register

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_committed_openapi_document_is_current() -> None:
    assert OPENAPI_FILE.read_text(encoding="utf-8") == render_openapi(), (
        "openapi/openapi.json is out of date: run `homecare-gateway openapi`"
    )


def test_process_message_body_is_described_by_the_hand_written_schema() -> None:
    import json

    document = json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))
    body = document["paths"]["/fhir/$process-message"]["post"]["requestBody"]["content"]
    assert body["application/fhir+json"]["schema"] == {"$ref": "#/components/schemas/HomecareMessageBundle"}
    bundle = document["components"]["schemas"]["HomecareMessageBundle"]
    assert bundle["properties"]["type"]["enum"] == ["message"]


@pytest.fixture(scope="module")
def asgi_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    """The app on its own database, with a registered trust client and an access token of it."""
    data_dir = tmp_path_factory.mktemp("schemathesis")
    database = Database(f"sqlite:///{data_dir / 'gateway.db'}")
    database.migrate()
    with database.write() as session:
        add_provider(
            session, ods_code="VNCEL", name="Test", adapter="fhir-rest", settings={}, now=system_clock()
        )
    trust = Tenant("trust-rba", Role.TRUST, "RBA", TRUST_SCOPES, ClientKey.generate("ES384"))
    register(database, trust)
    app = create_app(
        Settings(
            data_dir=data_dir, public_base_url=PUBLIC_BASE_URL, audit_seal_seconds=0, run_dispatcher=False
        ),
        db=database,
    )
    issued = app.state.services.tokens.issue(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": trust.key.assertion(trust.client_id),
        },
        request_id="schemathesis-setup",
    )
    yield app, issued.access_token
    database.dispose()


def test_no_server_errors_and_responses_match_the_schema(asgi_app: tuple[FastAPI, str]) -> None:
    app, token = asgi_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 4
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=35, deadline=None, suppress_health_check=list(HealthCheck))
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"},
                checks=[
                    checks.not_a_server_error,
                    checks.status_code_conformance,
                    checks.content_type_conformance,
                    checks.response_schema_conformance,
                ],
            )

        exercise()
