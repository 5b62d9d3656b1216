"""The real NHS EPS example messages: homecare orders pass, the others fail with the documented error.

The examples are read from ../shared/fixtures/eps/ and never copied into the project; the tests
skip when that folder is absent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from auth.identity import Role
from gateway.store.db import Database
from tests.support import PROVIDER_SCOPES, TRUST_SCOPES, ClientKey, RunningServer, Tenant, http_as, register

SEND_HOMECARE = (
    "homecare__acute__nominated-pharmacy__clinical-practitioner__1-Process-Request-Send-200_OK.json"
)
# Request file -> its documented response file (errors); both come from the EPS examples.
DOCUMENTED_ERRORS = {
    "errors__1-Process-Request-Send-400_INVALID_CHECKSUM.json": (
        "errors__1-Process-Response-Send-400_INVALID_CHECKSUM.json"
    ),
    "errors__2-Process-Request-Send-400_Invalid_Course_of_Therapy_mixed.json": (
        "errors__2-Process-Response-Send-400_Invalid_Course_of_Therapy_mixed.json"
    ),
    "errors__4-Process-Request-Send-400_invalid_intent.json": (
        "errors__4-Process-Response-Send-400_invalid_intent.json"
    ),
    "errors__3-Process-Request-Dispense-400_Invalid_Value.json": (
        "errors__3-Process-Response-Dispense-400_Invalid_Value.json"
    ),
}
COMMUNITY_SENDS = [
    "community__acute__nominated-pharmacy__clinical-practitioner__1-Process-Request-Send-200_OK.json",
    "community__acute__nominated-pharmacy__nurse__prescribing-and-professional-codes__1-Process-Request-Send-200_OK.json",
    "primary-care__acute__nominated-pharmacy__medical-prescriber__cancellations__2-Process-Request-Send-200_OK.json",
    "spec__errors__prescription-order-update__R-0006-Prescription.json",
]
DISPENSE_HOMECARE = (
    "homecare__acute__nominated-pharmacy__clinical-practitioner__1-Process-Request-Dispense-200_OK.json"
)
NOT_HOMECARE_CANCELS = [
    "community__acute__nominated-pharmacy__clinical-practitioner__1-Process-Request-Cancel-200_OK.json",
    "primary-care__acute__nominated-pharmacy__medical-prescriber__cancellations__2-Process-Request-Cancel-200_OK.json",
]


@pytest.fixture
def sender_clients(server: RunningServer, db: Database) -> Iterator[dict[str, httpx.Client]]:
    """A system for each sender the EPS examples use (a caller may only send as itself)."""
    clients: dict[str, httpx.Client] = {}
    senders = (
        ("RBA", Role.TRUST, TRUST_SCOPES),
        ("A83008", Role.TRUST, TRUST_SCOPES),
        ("VNCEL", Role.PROVIDER, PROVIDER_SCOPES),
    )
    for ods, role, scopes in senders:
        tenant = Tenant(f"eps-sender-{ods.lower()}", role, ods, scopes, ClientKey.generate("ES384"))
        register(db, tenant)
        clients[ods] = http_as(server, tenant)
    yield clients
    for http in clients.values():
        http.close()


def send(clients: dict[str, httpx.Client], path: Path) -> httpx.Response:
    body = path.read_bytes()
    sender = orjson.loads(body)["entry"][0]["resource"]["sender"]["identifier"]["value"]
    return clients[sender].post(
        "/fhir/$process-message", content=body, headers={"Content-Type": "application/fhir+json"}
    )


def test_the_homecare_order_is_accepted(sender_clients: dict[str, httpx.Client], eps_fixtures: Path) -> None:
    response = send(sender_clients, eps_fixtures / SEND_HOMECARE)
    assert response.status_code == 200, response.text
    outcome = response.json()
    documented = orjson.loads((eps_fixtures / "spec__errors__operation-outcome-success.json").read_bytes())
    assert [(i["severity"], i["code"]) for i in outcome["issue"]] == [
        (i["severity"], i["code"]) for i in documented["issue"]
    ]
    stored = sender_clients["RBA"].get(response.headers["location"])
    assert stored.content == (eps_fixtures / SEND_HOMECARE).read_bytes()


def _provenance_naming_a_resource_outside(body: bytes) -> bytes:
    """The message as a trust on EPS may send it: its Provenance's target list names a resource the
    Bundle leaves out (changed in memory only; the fixture file is never written)."""
    message = orjson.loads(body)
    provenances = [e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert provenances, "the signed example carries a Provenance"
    for provenance in provenances:
        provenance["target"].append({"reference": f"urn:uuid:{uuid.uuid4()}"})
    return orjson.dumps(message)


def test_a_signed_order_whose_provenance_names_a_resource_outside_the_bundle_is_accepted(
    sender_clients: dict[str, httpx.Client], eps_fixtures: Path
) -> None:
    body = _provenance_naming_a_resource_outside((eps_fixtures / SEND_HOMECARE).read_bytes())
    response = sender_clients["RBA"].post(
        "/fhir/$process-message", content=body, headers={"Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 200, response.text
    stored = sender_clients["RBA"].get(response.headers["location"])
    assert stored.content == body, "the Provenance is kept as received"


def _detail_code(issue: dict[str, Any]) -> str | None:
    coding = issue.get("details", {}).get("coding", [])
    return coding[0]["code"] if coding else None


@pytest.mark.parametrize("request_file", sorted(DOCUMENTED_ERRORS))
def test_error_examples_fail_with_their_documented_error(
    sender_clients: dict[str, httpx.Client], eps_fixtures: Path, request_file: str
) -> None:
    documented = orjson.loads((eps_fixtures / DOCUMENTED_ERRORS[request_file]).read_bytes())
    response = send(sender_clients, eps_fixtures / request_file)
    assert response.status_code == 400, response.text
    got = response.json()["issue"]
    for expected in documented["issue"]:
        matches = [
            issue
            for issue in got
            if issue["code"] == expected["code"]
            and (_detail_code(expected) is None or _detail_code(issue) == _detail_code(expected))
        ]
        assert matches, f"documented issue {expected} not among {got}"
        if "diagnostics" in expected:
            assert any(m["diagnostics"] == expected["diagnostics"] for m in matches)


@pytest.mark.parametrize("request_file", COMMUNITY_SENDS)
def test_community_and_primary_care_orders_are_refused_as_not_homecare(
    sender_clients: dict[str, httpx.Client], eps_fixtures: Path, request_file: str
) -> None:
    response = send(sender_clients, eps_fixtures / request_file)
    assert response.status_code == 422, response.text
    (issue,) = response.json()["issue"]
    assert issue["code"] == "business-rule"
    assert _detail_code(issue) == "NOT_HOMECARE_PRESCRIPTION"


@pytest.mark.parametrize("request_file", NOT_HOMECARE_CANCELS)
def test_cancellations_of_other_prescription_types_are_refused_as_not_homecare(
    sender_clients: dict[str, httpx.Client], eps_fixtures: Path, request_file: str
) -> None:
    response = send(sender_clients, eps_fixtures / request_file)
    assert response.status_code == 422, response.text
    assert [_detail_code(issue) for issue in response.json()["issue"]] == ["NOT_HOMECARE_PRESCRIPTION"]


def test_the_homecare_dispense_notification_follows_its_order(
    sender_clients: dict[str, httpx.Client], eps_fixtures: Path
) -> None:
    assert send(sender_clients, eps_fixtures / SEND_HOMECARE).status_code == 200
    response = send(sender_clients, eps_fixtures / DISPENSE_HOMECARE)
    assert response.status_code == 200, response.text
    assert response.json()["issue"][0]["severity"] == "information"
    tasks = sender_clients["VNCEL"].get("/fhir/Task", params={"owner": "VNCEL"}).json()["entry"]
    assert {entry["resource"]["businessStatus"]["coding"][0]["code"] for entry in tasks} == {"dispensed"}
    item_id = tasks[0]["resource"]["id"]
    dispenses = sender_clients["RBA"].get(
        "/fhir/MedicationDispense", params={"prescription": f"MedicationRequest/{item_id}"}
    )
    assert dispenses.status_code == 200
    (first, *_) = dispenses.json()["entry"]
    assert first["resource"]["authorizingPrescription"] == [{"reference": f"MedicationRequest/{item_id}"}]
    assert sender_clients["RBA"].get(f"/fhir/MedicationDispense/{first['resource']['id']}").status_code == 200
    assert (
        sender_clients["A83008"].get(f"/fhir/MedicationDispense/{first['resource']['id']}").status_code == 404
    )
    again = send(sender_clients, eps_fixtures / DISPENSE_HOMECARE)
    assert again.status_code == 200 and again.content == response.content, "a resubmission is replayed"
