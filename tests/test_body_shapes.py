"""No body shape makes the gateway answer 5xx: every endpoint that takes a body checks its structure first.

A type-confusion fuzzer takes a valid body for each endpoint and puts a value of another JSON type
(or nothing) at random places in it; schemathesis then runs every operation of the OpenAPI
document with bodies that break its schemas, with a real access token of a trust and of a provider.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from auth.identity import Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import (
    ASSERTION_TYPE,
    PROVIDER_SCOPES,
    PUBLIC_BASE_URL,
    TRUST_SCOPES,
    ClientKey,
    Tenant,
    register,
)

FHIR_JSON = {"Content-Type": "application/fhir+json"}
HOMECARE_STATUS = "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status"

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_DELETE = object()


def _places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _places(child, (*path, key))


def _replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        copy = dict(document)
        if value is _DELETE and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replaced(document[head], rest, value)
        return copy
    copy_list = list(document)
    if value is _DELETE and not rest:
        del copy_list[head]
    else:
        copy_list[head] = _replaced(document[head], rest, value)
    return copy_list


@st.composite
def confused(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` with one to three of its elements given a value of any JSON type, or removed."""
    document = valid
    for _ in range(draw(st.integers(1, 3))):
        places = [path for path in _places(document) if path]
        if not places:
            break
        path = draw(st.sampled_from(places))
        document = _replaced(document, path, draw(st.one_of(st.just(_DELETE), _json_values)))
    return document


@pytest.fixture
def accepted_order(client: httpx.Client, db: Database) -> tuple[dict[str, Any], str]:
    """An accepted order with one item: the message, and the item's gateway id."""
    message = PrescriptionMessageBuilder(seed=77).build(items=1)
    response = client.post("/fhir/$process-message", content=orjson.dumps(message), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    diagnostics = response.json()["issue"][0]["diagnostics"]
    item_id = next(part for part in diagnostics.split() if part.startswith("MedicationRequest/"))
    return message, item_id.removeprefix("MedicationRequest/").rstrip(",.")


def _status_task(message: dict[str, Any]) -> dict[str, Any]:
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    return {
        "resourceType": "Task",
        "status": "in-progress",
        "intent": "order",
        "basedOn": [
            {"identifier": {k: v for k, v in request["groupIdentifier"].items() if k != "extension"}}
        ],
        "focus": {"identifier": request["identifier"][0]},
        "businessStatus": {"coding": [{"system": HOMECARE_STATUS, "code": "accepted"}]},
        "lastModified": "2026-11-23T10:15:00Z",
        "owner": {"identifier": request["dispenseRequest"]["performer"]["identifier"]},
    }


def _bodies(message: dict[str, Any], item_id: str) -> dict[str, tuple[str, str, str, Any]]:
    """Per endpoint: the client that may call it, the method, the path and a valid body."""
    task = _status_task(message)
    return {
        "process-message": (
            "trust-rba",
            "POST",
            "/fhir/$process-message",
            PrescriptionMessageBuilder(seed=78).build(),
        ),
        "task-create": ("provider-vncel", "POST", "/fhir/Task", task),
        "task-update": ("provider-vncel", "PUT", f"/fhir/Task/{item_id}", task),
        "transaction": (
            "provider-vncel",
            "POST",
            "/fhir",
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": task, "request": {"method": "PUT", "url": f"Task/{item_id}"}}],
            },
        ),
        "communication": (
            "trust-rba",
            "POST",
            "/fhir/Communication",
            {
                "resourceType": "Communication",
                "status": "completed",
                "about": [{"reference": f"Task/{item_id}"}],
                "payload": [{"contentString": "Dose confirmed"}],
            },
        ),
        "subscription": (
            "trust-rba",
            "POST",
            "/fhir/Subscription",
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "fuzz",
                "criteria": "Task",
                "channel": {"type": "rest-hook", "endpoint": "https://203.0.113.9/hook", "header": ["A: b"]},
            },
        ),
    }


@pytest.mark.parametrize(
    "field",
    [
        {"about": 5},
        {"about": "Task/x"},
        {"about": [5]},
        {"about": {"reference": "Task/x"}},
        {"payload": 5},
        {"payload": "answer"},
        {"payload": [5]},
        {"payload": {"contentString": "answer"}},
    ],
)
def test_a_communication_of_the_wrong_shape_is_refused(
    client: httpx.Client, accepted_order: tuple[dict[str, Any], str], field: dict[str, Any]
) -> None:
    _, item_id = accepted_order
    body = {
        "resourceType": "Communication",
        "status": "completed",
        "about": [{"reference": f"Task/{item_id}"}],
        "payload": [{"contentString": "Dose confirmed"}],
        **field,
    }
    response = client.post("/fhir/Communication", content=orjson.dumps(body), headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    assert [issue["expression"][0] for issue in response.json()["issue"]]


@pytest.mark.parametrize(
    "endpoint",
    ["process-message", "task-create", "task-update", "transaction", "communication", "subscription"],
)
def test_no_body_shape_gets_a_server_error(
    as_tenant: Callable[..., httpx.Client], accepted_order: tuple[dict[str, Any], str], endpoint: str
) -> None:
    message, item_id = accepted_order
    client_id, method, path, valid = _bodies(message, item_id)[endpoint]
    http = as_tenant(client_id)
    assert http.request(method, path, content=orjson.dumps(valid), headers=FHIR_JSON).status_code < 500

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=confused(valid))
    def send(body: Any) -> None:
        response = http.request(method, path, content=orjson.dumps(body), headers=FHIR_JSON)
        assert response.status_code < 500, (body, response.text)

    send()


@pytest.fixture(scope="module")
def app_with_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    """The app on its own database, with a trust and a provider client and an access token of each."""
    data_dir = tmp_path_factory.mktemp("body-shapes")
    database = Database(f"sqlite:///{data_dir / 'gateway.db'}")
    database.migrate()
    with database.write() as session:
        add_provider(
            session, ods_code="VNCEL", name="Test", adapter="fhir-rest", settings={}, now=system_clock()
        )
    tenants = [
        Tenant("trust-rba", Role.TRUST, "RBA", TRUST_SCOPES, ClientKey.generate("ES384")),
        Tenant("provider-vncel", Role.PROVIDER, "VNCEL", PROVIDER_SCOPES, ClientKey.generate("ES256")),
    ]
    app = create_app(
        Settings(
            data_dir=data_dir, public_base_url=PUBLIC_BASE_URL, audit_seal_seconds=0, run_dispatcher=False
        ),
        db=database,
    )
    tokens = {}
    for tenant in tenants:
        register(database, tenant)
        issued = app.state.services.tokens.issue(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": tenant.key.assertion(tenant.client_id),
            },
            request_id="body-shapes-setup",
        )
        tokens[tenant.client_id] = issued.access_token
    yield app, tokens
    database.dispose()


@pytest.mark.parametrize("client_id", ["trust-rba", "provider-vncel"])
def test_schemathesis_finds_no_server_error_with_schema_breaking_bodies(
    app_with_tokens: tuple[FastAPI, dict[str, str]], client_id: str
) -> None:
    app, tokens = app_with_tokens
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {tokens[client_id]}"}, checks=[checks.not_a_server_error]
            )

        try:
            exercise()
        except Unsatisfiable:
            continue  # nothing in this operation's schema to break (no body, no typed parameter)
