"""The OpenAPI document an integrator reads and tries: request bodies described, an example for every
request and every answer (each valid against its schema), no response the API never sends (FastAPI's
422), and a bearer-token scheme that Swagger's "Try it out" can use with a token from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import orjson
import pytest

from tests.support import RunningServer

DOCUMENT = json.loads((Path(__file__).resolve().parents[1] / "openapi" / "openapi.json").read_text("utf-8"))
OPERATIONS = [
    (method, path, operation)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
]


def resolved(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with the document's components beside it, so `$ref`s resolve."""
    return {**schema, "components": DOCUMENT["components"]}


def examples_of(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [example["value"] for example in media.get("examples", {}).values()]


@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_request_and_answer_has_an_example_that_fits_its_schema(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    bodies = [("request", media) for media in operation.get("requestBody", {}).get("content", {}).values()]
    answers = [
        (status, media)
        for status, response in operation["responses"].items()
        for media in response.get("content", {}).values()
    ]
    for where, media in bodies + answers:
        examples = examples_of(media)
        assert examples, f"{method.upper()} {path} {where}: no example"
        validator = jsonschema_rs.validator_for(resolved(media["schema"]))
        for example in examples:
            errors = [error.message for error in validator.iter_errors(example)]
            assert not errors, (
                f"{method.upper()} {path} {where}: example does not fit its schema: {errors[:3]}"
            )


def test_the_bodies_of_status_reports_and_transactions_are_described() -> None:
    paths = DOCUMENT["paths"]
    for method, path, schema in (
        ("post", "/fhir/Task", "StatusTask"),
        ("put", "/fhir/Task/{id}", "StatusTask"),
        ("post", "/fhir", "TaskTransactionBundle"),
        ("post", "/fhir/$process-message", "HomecareMessageBundle"),
        ("post", "/fhir/Bundle/$validate", "HomecareMessageBundle"),
        ("post", "/fhir/Communication", "CommunicationAnswer"),
    ):
        body = paths[path][method]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/fhir+json"]["schema"] == {
            "$ref": f"#/components/schemas/{schema}"
        }
    task = DOCUMENT["components"]["schemas"]["StatusTask"]
    assert {"basedOn", "focus", "businessStatus", "lastModified", "owner"} <= set(task["required"])


def test_no_operation_documents_fastapis_422() -> None:
    assert "HTTPValidationError" not in json.dumps(DOCUMENT)
    with_422 = {(m, p) for m, p, o in OPERATIONS if "422" in o["responses"]}
    # The routes whose business rules answer 422 (an OperationOutcome): a message's rules, and a
    # subscription over the tenant's cap.
    assert with_422 == {("post", "/fhir/$process-message"), ("post", "/fhir/Subscription")}
    assert "OperationOutcome" in json.dumps(
        DOCUMENT["paths"]["/fhir/$process-message"]["post"]["responses"]["422"]
    )


def test_every_secured_operation_offers_the_bearer_scheme() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert "homecare-gateway token" in schemes["bearer"]["description"]
    secured = [(m, p, o) for m, p, o in OPERATIONS if "security" in o]
    assert len(secured) >= 20
    for method, path, operation in secured:
        assert {"bearer": []} in operation["security"], (method, path)
        # The SMART scheme still lists the scopes the route needs.
        assert any("smart-backend-services" in requirement for requirement in operation["security"]), (
            method,
            path,
        )


def test_a_token_from_the_cli_works_as_swagger_sends_it(client: httpx.Client, server: RunningServer) -> None:
    """Swagger UI's "Try it out" with the bearer scheme sends `Authorization: Bearer <token>`: the
    same header the gateway reads. The example request of $validate, sent that way, is valid."""
    token = client.headers["authorization"].removeprefix("Bearer ")
    operation = DOCUMENT["paths"]["/fhir/Bundle/$validate"]["post"]
    example = operation["requestBody"]["content"]["application/fhir+json"]["examples"]["prescription-order"][
        "value"
    ]
    answer = httpx.post(
        f"{server.base_url}/fhir/Bundle/$validate",
        content=orjson.dumps(example),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["issue"][0]["severity"] == "information", answer.text
