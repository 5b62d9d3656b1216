"""The committed OpenAPI document matches the code, and schemathesis finds no 5xx and no
response outside the documented schemas (statuses, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks

from gateway.app import create_app
from gateway.clock import system_clock
from gateway.openapi_export import render_openapi
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import DEV_TOKEN

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
def asgi_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    data_dir = tmp_path_factory.mktemp("schemathesis")
    database = Database(f"sqlite:///{data_dir / 'gateway.db'}")
    database.migrate()
    with database.write() as session:
        add_provider(
            session, ods_code="VNCEL", name="Test", adapter="fhir-rest", settings={}, now=system_clock()
        )
    yield create_app(Settings(data_dir=data_dir, dev_token=DEV_TOKEN), db=database)
    database.dispose()


def test_no_server_errors_and_responses_match_the_schema(asgi_app: object) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", asgi_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 4
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {DEV_TOKEN}"},
                checks=[
                    checks.not_a_server_error,
                    checks.status_code_conformance,
                    checks.content_type_conformance,
                    checks.response_schema_conformance,
                ],
            )

        exercise()
