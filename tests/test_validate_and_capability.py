"""`POST /fhir/Bundle/$validate` checks a message as intake would and stores nothing; the
CapabilityStatement's search parameters are exactly those the search code accepts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from fhir_profiles.builder import PrescriptionMessageBuilder, break_message, build_cancellation
from gateway.store.db import Database
from tests.support import TABLES_IN_DELETE_ORDER, RunningServer
from tests.test_status_api import order

FHIR = {"Content-Type": "application/fhir+json"}
VALIDATE = "/fhir/Bundle/$validate"


def row_counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        return {
            table: session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in TABLES_IN_DELETE_ORDER
        }


def test_a_valid_order_is_valid_and_nothing_is_stored(client: httpx.Client, db: Database) -> None:
    message = orjson.dumps(PrescriptionMessageBuilder(seed=401).build(items=2))
    before = row_counts(db)
    answer = client.post(VALIDATE, content=message, headers=FHIR)
    assert answer.status_code == 200, answer.text
    (issue,) = answer.json()["issue"]
    assert issue["severity"] == "information"
    assert "prescription-order" in issue["diagnostics"] and "nothing was stored" in issue["diagnostics"]
    assert "location" not in answer.headers
    assert row_counts(db) == before, "validating stored something"
    # Not remembered either: the same bytes to $process-message are a first submission, not a replay.
    sent = client.post("/fhir/$process-message", content=message, headers=FHIR)
    assert sent.status_code == 200, sent.text
    after = row_counts(db)
    assert after["prescription"] == before["prescription"] + 1
    assert after["prescription_item"] == before["prescription_item"] + 2


def test_an_invalid_message_gets_every_problem_and_nothing_is_stored(
    client: httpx.Client, db: Database
) -> None:
    broken = break_message(
        break_message(PrescriptionMessageBuilder(seed=402).build(items=2), "status-bogus"),
        "bad-nhs-check-digit",
    )
    before = row_counts(db)
    answer = client.post(VALIDATE, content=orjson.dumps(broken), headers=FHIR)
    assert answer.status_code == 200, answer.text
    issues = answer.json()["issue"]
    assert {issue["severity"] for issue in issues} == {"error"}
    expressions = [e for issue in issues for e in issue.get("expression", [])]
    assert any(e.endswith(".status") for e in expressions), expressions
    assert len(issues) >= 2
    assert row_counts(db) == before, "validating stored something"
    # $process-message refuses it for the same problems.
    refused = client.post("/fhir/$process-message", content=orjson.dumps(broken), headers=FHIR)
    assert refused.status_code == 400
    assert [i["diagnostics"] for i in refused.json()["issue"]] == [i["diagnostics"] for i in issues]


def test_an_order_for_an_unknown_provider_is_not_valid(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=403).build(items=1, performer_ods="VNZZZ")
    answer = client.post(VALIDATE, content=orjson.dumps(message), headers=FHIR)
    assert answer.status_code == 200
    (issue,) = answer.json()["issue"]
    assert issue["severity"] == "error"
    assert issue["details"]["coding"][0]["code"] == "UNKNOWN_PROVIDER"


def test_validate_needs_the_token_and_scope_of_intake(
    server: RunningServer, as_tenant: Callable[..., httpx.Client], db: Database
) -> None:
    message = orjson.dumps(PrescriptionMessageBuilder(seed=404).build(items=1))
    assert httpx.post(f"{server.base_url}{VALIDATE}", content=message, headers=FHIR).status_code == 401
    # The trust without the scope of a prescription-order, a provider, and another trust (not the sender).
    without_scope = as_tenant("trust-rba", "system/Task.rs")
    assert without_scope.post(VALIDATE, content=message, headers=FHIR).status_code == 403
    assert as_tenant("provider-vncel").post(VALIDATE, content=message, headers=FHIR).status_code == 403
    other = as_tenant("trust-rbb").post(VALIDATE, content=message, headers=FHIR)
    assert other.status_code == 403
    assert "sender" in other.json()["issue"][0]["diagnostics"]


def test_a_cancellation_is_checked_for_shape(client: httpx.Client, db: Database) -> None:
    message, _ = order(client, items=1, seed=405)
    cancel = build_cancellation(message)
    answer = client.post(VALIDATE, content=orjson.dumps(cancel), headers=FHIR)
    assert answer.status_code == 200
    assert answer.json()["issue"][0]["severity"] == "information"
    assert "prescription-order-update" in answer.json()["issue"][0]["diagnostics"]


def test_unreadable_bodies_are_refused_as_by_intake(client: httpx.Client) -> None:
    assert client.post(VALIDATE, content=b"{", headers=FHIR).status_code == 400
    assert client.post(VALIDATE, content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415


# --- the CapabilityStatement and the search code -------------------------------------------------

SEARCHES = {
    "Task": ("GET", "/fhir/Task"),
    "MedicationDispense": ("GET", "/fhir/MedicationDispense"),
    "Communication": ("GET", "/fhir/Communication"),
    "Subscription": ("GET", "/fhir/Subscription"),
}
# Values the search code takes for each parameter (for a resource that needs one, with it).
REQUIRED = {"MedicationDispense": "prescription", "Communication": "about"}


def capability_parameters(server: RunningServer) -> dict[str, list[str]]:
    statement = httpx.get(f"{server.base_url}/fhir/metadata").json()
    return {
        resource["type"]: [p["name"] for p in resource.get("searchParam", [])]
        for resource in statement["rest"][0]["resource"]
        if "search-type" in {i["code"] for i in resource["interaction"]}
    }


def search(http: httpx.Client, resource: str, parameters: dict[str, str]) -> httpx.Response:
    if "patient:identifier" in parameters:
        return http.post("/fhir/Task/_search", data=parameters)
    return http.get(SEARCHES[resource][1], params=parameters)


def accepted(http: httpx.Client, resource: str, name: str, value: str, base: dict[str, str]) -> bool:
    answer = search(http, resource, {**base, name: value})
    refused_by_name = answer.status_code == 400 and any(
        name in issue.get("expression", []) and "not supported" in issue.get("diagnostics", "")
        for issue in answer.json()["issue"]
    )
    return not refused_by_name and answer.status_code in (200, 404)


CANDIDATES = (
    "status",
    "identifier",
    "patient",
    "subject",
    "_id",
    "_include",
    "_elements",
    "focus",
    "owner:identifier",
    "sent",
    "_total",
    "whenhandedover",
)


def test_the_capability_statement_lists_exactly_the_parameters_the_search_code_takes(
    server: RunningServer, client: httpx.Client
) -> None:
    _, (item_id,) = order(client, items=1, seed=406)
    examples = {
        "owner": "VNCEL",
        "requester": "RBA",
        "business-status": "queued,sent",
        "focus:identifier": "item-1",
        "based-on:identifier": "A99968-A99968-00000T",
        "patient:identifier": "9449304106",
        "_lastUpdated": "gt2026-01-01T00:00:00Z",
        "_count": "5",
        "_sort": "_lastUpdated",
        "prescription": f"MedicationRequest/{item_id}",
        "about": f"Task/{item_id}",
    }
    listed = capability_parameters(server)
    assert set(listed) == set(SEARCHES)
    assert {"_count", "_sort"} <= set(listed["Task"])
    for resource, names in listed.items():
        base = {REQUIRED[resource]: examples[REQUIRED[resource]]} if resource in REQUIRED else {}
        for name in names:
            assert accepted(client, resource, name, examples[name], base), (resource, name)
        for name in CANDIDATES:
            if name not in names:
                assert not accepted(client, resource, name, "x", base), (
                    f"{resource} search takes {name}, which the CapabilityStatement does not list"
                )


@pytest.mark.parametrize("resource", sorted(SEARCHES))
def test_the_openapi_document_describes_each_search_parameter(server: RunningServer, resource: str) -> None:
    document: dict[str, Any] = httpx.get(f"{server.base_url}/openapi.json").json()
    listed = capability_parameters(server)[resource]
    method, path = SEARCHES[resource]
    query = {
        p["name"]: p
        for p in document["paths"][path][method.lower()].get("parameters", [])
        if p["in"] == "query"
    }
    in_urls = [name for name in listed if name != "patient:identifier"]
    assert set(in_urls) <= set(query), set(in_urls) - set(query)
    for name in in_urls:
        assert query[name]["description"], name
        assert "example" in query[name], name
    if resource == "Task":
        form = document["paths"]["/fhir/Task/_search"]["post"]["requestBody"]["content"][
            "application/x-www-form-urlencoded"
        ]["schema"]["properties"]
        assert set(listed) <= set(form)
