"""Status through one interface: providers report per line item; trusts read, search and follow it."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from gateway.domain.status import DEFINITIONS, Status
from gateway.store.db import Database
from tests.support import PUBLIC_BASE_URL

FHIR = {"Content-Type": "application/fhir+json"}
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
HOMECARE_STATUS = "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status"


def order(
    client: httpx.Client, *, items: int = 2, seed: int = 1, **build: Any
) -> tuple[dict[str, Any], list[str]]:
    """Send a prescription as trust RBA; its message and the gateway ids of its line items."""
    message = PrescriptionMessageBuilder(seed=seed).build(items=items, **build)
    response = client.post("/fhir/$process-message", content=orjson.dumps(message), headers=FHIR)
    assert response.status_code == 200, response.text
    diagnostics = response.json()["issue"][0]["diagnostics"]
    item_ids = [
        word.removeprefix("MedicationRequest/").rstrip(",")
        for word in diagnostics.split()
        if word.startswith("MedicationRequest/")
    ]
    return message, item_ids


def task(message: dict[str, Any], position: int, status: str, minute: int, **extra: Any) -> dict[str, Any]:
    """A provider's status Task for one line item of `message`."""
    request = [
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    ][position]
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "basedOn": [{"identifier": request["groupIdentifier"] | {"extension": []}}],
        "status": "in-progress",
        "businessStatus": {"coding": [{"system": HOMECARE_STATUS, "code": status}]},
        "intent": "order",
        "focus": {"identifier": request["identifier"][0]},
        "lastModified": (T0 + timedelta(minutes=minute)).isoformat(),
        "owner": {"identifier": request["dispenseRequest"]["performer"]["identifier"]},
    }
    resource["basedOn"][0]["identifier"].pop("extension")
    resource.update(extra)
    return resource


def report(provider: httpx.Client, resource: dict[str, Any]) -> httpx.Response:
    return provider.post("/fhir/Task", content=orjson.dumps(resource), headers=FHIR)


def business_status(resource: dict[str, Any]) -> str:
    return str(resource["businessStatus"]["coding"][0]["code"])


@pytest.fixture
def provider(as_tenant: Callable[..., httpx.Client]) -> httpx.Client:
    return as_tenant("provider-vncel")


def test_a_provider_report_changes_the_items_task_and_the_trust_sees_it(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, (first, second) = order(client)
    response = report(provider, task(message, 0, "accepted", 1))
    assert response.status_code == 200, response.text
    assert response.headers["x-status-verdict"] == "applied"
    assert business_status(response.json()) == "accepted"
    read = client.get(f"/fhir/Task/{first}").json()
    assert read["id"] == first and business_status(read) == "accepted" and read["status"] == "accepted"
    assert datetime.fromisoformat(read["lastModified"]) == T0 + timedelta(minutes=1), "as reported"
    assert read["businessStatus"]["coding"][0] == {
        "system": HOMECARE_STATUS,
        "code": "accepted",
        "display": DEFINITIONS[Status.ACCEPTED],
    }
    assert read["owner"]["identifier"]["value"] == "VNCEL"
    assert read["focus"]["reference"] == f"MedicationRequest/{first}"
    other = client.get(f"/fhir/Task/{second}").json()
    assert business_status(other) in ("queued", "sent")
    partial = {e["url"]: e for e in read["extension"]}
    assert any(
        x["url"] == "partial" and x["valueBoolean"] is True for x in next(iter(partial.values()))["extension"]
    )


def test_the_whole_lifecycle_to_delivered(client: httpx.Client, provider: httpx.Client, db: Database) -> None:
    message, (item,) = order(client, items=1, seed=2)
    path = ["accepted", "in-preparation", "dispensed", "delivery-scheduled", "out-for-delivery", "delivered"]
    for minute, status in enumerate(path, start=1):
        assert report(provider, task(message, 0, status, minute)).status_code == 200
    read = client.get(f"/fhir/Task/{item}").json()
    assert business_status(read) == "delivered" and read["status"] == "completed"
    assert client.get(f"/fhir/MedicationRequest/{item}").json()["status"] == "completed"


def test_an_illegal_report_is_refused_naming_both_statuses(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, (item,) = order(client, items=1, seed=3)
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    refused = report(provider, task(message, 0, "delivered", 2))
    assert refused.status_code == 409
    (issue,) = refused.json()["issue"]
    assert "'accepted'" in issue["diagnostics"] and "'delivered'" in issue["diagnostics"]
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "accepted"


def test_out_of_order_and_duplicate_reports_end_at_the_right_status(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, (item,) = order(client, items=1, seed=4)
    updates = {
        "accepted": task(message, 0, "accepted", 1),
        "dispensed": task(message, 0, "dispensed", 2),
        "out-for-delivery": task(message, 0, "out-for-delivery", 3),
    }
    assert report(provider, updates["out-for-delivery"]).status_code == 409, "too early: refused"
    assert report(provider, updates["accepted"]).status_code == 200
    assert report(provider, updates["accepted"]).headers["x-status-verdict"] == "duplicate"
    assert report(provider, updates["out-for-delivery"]).status_code == 409
    assert report(provider, updates["dispensed"]).status_code == 200
    assert report(provider, updates["out-for-delivery"]).status_code == 200
    late = report(provider, task(message, 0, "in-preparation", 1))
    assert late.headers["x-status-verdict"] == "superseded"
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "out-for-delivery"


def test_a_failed_delivery_with_its_cause_then_rescheduled_then_delivered(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, (item,) = order(client, items=1, seed=5)
    for minute, status in enumerate(["accepted", "dispensed", "delivery-scheduled"], start=1):
        assert report(provider, task(message, 0, status, minute)).status_code == 200
    failed = task(
        message,
        0,
        "delivery-failed",
        10,
        statusReason={"coding": [{"code": "patient-not-in"}], "text": "Patient not at home"},
        extension=[
            {
                "url": "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-ResponsibleParty",
                "valueCoding": {
                    "system": "https://homecare-gateway.nhs.uk/CodeSystem/responsible-party",
                    "code": "patient",
                },
            }
        ],
    )
    answer = report(provider, failed)
    assert answer.status_code == 200
    assert answer.json()["statusReason"]["text"] == "Patient not at home", "the Task as it now is"
    read = client.get(f"/fhir/Task/{item}").json()
    assert business_status(read) == "delivery-failed"
    assert read["statusReason"]["text"] == "Patient not at home"
    assert any(e.get("valueCoding", {}).get("code") == "patient" for e in read["extension"])
    for minute, status in ((11, "delivery-scheduled"), (12, "out-for-delivery"), (13, "delivered")):
        assert report(provider, task(message, 0, status, minute)).status_code == 200
    history = client.get(f"/fhir/Task/{item}/_history").json()
    statuses = [business_status(entry["resource"]) for entry in history["entry"]]
    assert statuses == [
        "received",
        "queued",
        "accepted",
        "dispensed",
        "delivery-scheduled",
        "delivery-failed",
        "delivery-scheduled",
        "out-for-delivery",
        "delivered",
    ]


def test_psu_status_codes_are_understood(client: httpx.Client, provider: httpx.Client, db: Database) -> None:
    message, (item,) = order(client, items=1, seed=6)
    psu = "https://fhir.nhs.uk/CodeSystem/task-businessStatus-nppt"
    for minute, code in enumerate(["With Pharmacy", "Ready to Dispatch", "Dispatched", "Collected"], start=1):
        resource = task(message, 0, "accepted", minute)
        resource["businessStatus"] = {"coding": [{"system": psu, "code": code}]}
        assert report(provider, resource).status_code == 200, code
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "delivered"


def test_a_transaction_applies_all_or_nothing(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, (first, second) = order(client, seed=7)

    def bundle(*tasks: dict[str, Any]) -> bytes:
        return orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": t, "request": {"method": "POST", "url": "Task"}} for t in tasks],
            }
        )

    refused = provider.post(
        "/fhir",
        content=bundle(task(message, 0, "accepted", 1), task(message, 1, "delivered", 1)),
        headers=FHIR,
    )
    assert refused.status_code == 409
    assert business_status(client.get(f"/fhir/Task/{first}").json()) != "accepted", "nothing was applied"
    done = provider.post(
        "/fhir",
        content=bundle(task(message, 0, "accepted", 1), task(message, 1, "accepted", 1)),
        headers=FHIR,
    )
    assert done.status_code == 200, done.text
    response = done.json()
    assert response["type"] == "transaction-response"
    assert [business_status(e["resource"]) for e in response["entry"]] == ["accepted", "accepted"]
    assert {e["resource"]["id"] for e in response["entry"]} == {first, second}


def test_a_bad_task_gets_every_problem_with_its_place(
    provider: httpx.Client, client: httpx.Client, db: Database
) -> None:
    message, _ = order(client, items=1, seed=8)
    resource = task(message, 0, "teleported", 1)
    del resource["lastModified"]
    resource["focus"] = {"reference": "MedicationRequest/x"}
    response = report(provider, resource)
    assert response.status_code == 400
    expressions = {issue.get("expression", [None])[0] for issue in response.json()["issue"]}
    assert {"Task.lastModified", "Task.focus.identifier", "Task.businessStatus.coding.code"} <= expressions


def test_tenancy_holds_for_status(
    client: httpx.Client, provider: httpx.Client, as_tenant: Callable[..., httpx.Client], db: Database
) -> None:
    message, (item, _) = order(client, seed=9)
    other_provider = as_tenant("provider-vnfkt")
    pretending = task(message, 0, "accepted", 1)
    assert report(other_provider, pretending).status_code == 403, "owner is not the caller"
    pretending["owner"]["identifier"]["value"] = "VNFKT"
    assert report(other_provider, pretending).status_code == 404, "not routed to it: does not exist for it"
    assert other_provider.get(f"/fhir/Task/{item}").status_code == 404
    assert as_tenant("trust-rbb").get(f"/fhir/Task/{item}").status_code == 404
    assert other_provider.get("/fhir/Task").json().get("entry", []) == []
    assert provider.get(f"/fhir/Task/{item}").status_code == 200
    assert (
        client.put(
            f"/fhir/Task/{item}", content=orjson.dumps(task(message, 0, "accepted", 1)), headers=FHIR
        ).status_code
        == 403
    )


def test_search_filters_and_pages_with_a_stable_keyset(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, items = order(client, items=3, seed=10)
    order(client, items=1, seed=11, performer_ods="VNFKT")
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    accepted = client.get("/fhir/Task", params={"owner": "VNCEL", "business-status": "accepted"}).json()
    assert [e["resource"]["id"] for e in accepted["entry"]] == [items[0]]
    seen: list[str] = []
    url: str | None = "/fhir/Task?owner=https://fhir.nhs.uk/Id/ods-organization-code|VNCEL&_count=1"
    while url:
        page = client.get(url.removeprefix(PUBLIC_BASE_URL)).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if url and len(seen) == 1:
            # New prescriptions arrive while the trust pages: the pages still hold each item once.
            order(client, items=2, seed=13)
    assert sorted(seen) == sorted(items)
    assert len(seen) == len(set(seen))
    assert client.get(
        "/fhir/Task",
        params={"based-on:identifier": message["entry"][1]["resource"]["groupIdentifier"]["value"]},
    ).json()["entry"]


def test_patient_search_only_in_a_post_body(client: httpx.Client, db: Database) -> None:
    message, items = order(client, items=2, seed=12)
    nhs = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")[
        "identifier"
    ][0]["value"]
    refused = client.get("/fhir/Task", params={"patient:identifier": nhs})
    assert refused.status_code == 400
    found = client.post(
        "/fhir/Task/_search",
        content=f"patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert found.status_code == 200
    assert sorted(e["resource"]["id"] for e in found.json()["entry"]) == sorted(items)
    assert nhs not in str(found.json()["link"])


def test_unknown_search_parameters_are_refused(client: httpx.Client, db: Database) -> None:
    response = client.get("/fhir/Task", params={"colour": "blue"})
    assert response.status_code == 400
    assert "colour" in response.json()["issue"][0]["diagnostics"]


def test_another_organisations_task_history_answers_as_a_missing_one(
    client: httpx.Client, provider: httpx.Client, as_tenant: Callable[..., httpx.Client], db: Database
) -> None:
    message, (item, _) = order(client, seed=31)
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    for owner in (client, provider):
        history = owner.get(f"/fhir/Task/{item}/_history")
        assert history.status_code == 200
        assert [business_status(e["resource"]) for e in history.json()["entry"]][-1] == "accepted"
    missing = client.get(f"/fhir/Task/{uuid.uuid4()}/_history")
    for stranger in ("trust-rbb", "provider-vnfkt"):
        refused = as_tenant(stranger).get(f"/fhir/Task/{item}/_history")
        assert refused.status_code == 404, (stranger, refused.text)
        assert refused.json()["issue"] == missing.json()["issue"], "the same answer as a missing one"
        assert "accepted" not in refused.text


def test_a_provider_cannot_put_a_task_of_an_item_routed_to_another(
    client: httpx.Client, provider: httpx.Client, as_tenant: Callable[..., httpx.Client], db: Database
) -> None:
    """PUT names the item by the gateway's id: the provider must be the one the item was routed to,
    even when the Task names itself as owner and the item's own prescription and line item IDs."""
    message, (item, _) = order(client, seed=32)
    pretending = copy.deepcopy(task(message, 0, "accepted", 1))
    pretending["owner"]["identifier"]["value"] = "VNFKT"
    refused = as_tenant("provider-vnfkt").put(
        f"/fhir/Task/{item}", content=orjson.dumps(pretending), headers=FHIR
    )
    assert refused.status_code == 404, refused.text
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "queued"
    put = provider.put(
        f"/fhir/Task/{item}", content=orjson.dumps(task(message, 0, "accepted", 1)), headers=FHIR
    )
    assert put.status_code == 200, put.text
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "accepted"


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), "dispensed"),  # skips acceptance
        (("accepted",), "delivered"),  # skips dispensing
        (("accepted",), "cancelled"),  # the provider ends it without a cancel request
        (("accepted", "dispensed"), "in-preparation"),  # backwards
        (("accepted", "dispensed"), "rejected"),  # too late to reject
        (("accepted", "query"), "delivered"),  # a query resumes, it does not jump
        (("rejected",), "accepted"),  # rejected is terminal
        (("accepted", "dispensed", "delivered"), "delivery-failed"),  # delivered is terminal
    ],
)
def test_a_legal_looking_report_that_the_lifecycle_forbids_is_refused_and_changes_nothing(
    client: httpx.Client, provider: httpx.Client, db: Database, path: tuple[str, ...], illegal: str
) -> None:
    message, (item, _) = order(client, seed=33)
    for minute, status in enumerate(path, start=1):
        assert report(provider, task(message, 0, status, minute)).status_code == 200, status
    before = client.get(f"/fhir/Task/{item}").json()
    refused = report(provider, task(message, 0, illegal, len(path) + 1))
    assert refused.status_code == 409, refused.text
    current = path[-1] if path else "sent"
    (issue,) = refused.json()["issue"]
    assert f"'{illegal}'" in issue["diagnostics"] and f"'{current}'" in issue["diagnostics"]
    assert issue["expression"] == ["Task.businessStatus"]
    after = client.get(f"/fhir/Task/{item}").json()
    assert business_status(after) == business_status(before)
    assert after["meta"] == before["meta"]


def test_a_report_about_an_order_withdrawn_before_it_was_sent_is_refused(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    """Cancelled before the provider ever had it: no report can follow (409, both statuses named)."""
    message, (item,) = order(client, items=1, seed=35)
    cancel = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert cancel.status_code == 200, cancel.text
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "cancelled"
    refused = report(provider, task(message, 0, "accepted", 1))
    assert refused.status_code == 409, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["diagnostics"] == "The item is 'cancelled' and cannot become 'accepted'"
    assert issue["expression"] == ["Task.businessStatus"]
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "cancelled"


def test_a_prescription_needs_attention_while_an_item_has_a_query_open(
    client: httpx.Client, provider: httpx.Client, db: Database
) -> None:
    message, _ = order(client, items=2, seed=38)

    def attention() -> str | None:
        with db.read() as session:
            value = session.execute(text("SELECT attention FROM prescription")).scalar_one()
        return None if value is None else str(value)

    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    assert attention() is None
    assert report(provider, task(message, 0, "query", 2)).status_code == 200
    assert attention() == "query"
    assert report(provider, task(message, 0, "accepted", 3)).status_code == 200
    assert attention() is None


def test_withdrawing_an_unsent_order_shows_in_each_items_own_history_once(
    client: httpx.Client, db: Database
) -> None:
    message, items = order(client, items=2, seed=36)
    cancel = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert cancel.status_code == 200, cancel.text
    for item in items:
        history = client.get(f"/fhir/Task/{item}/_history").json()
        statuses = [business_status(entry["resource"]) for entry in history["entry"]]
        assert statuses == ["received", "queued", "cancelled"], item


@pytest.mark.parametrize(
    "others_move", ["received", "queued", "sent", "undeliverable", "cancel-requested", "expired"]
)
def test_a_provider_cannot_report_a_move_of_the_gateway_or_the_trust(
    client: httpx.Client, provider: httpx.Client, db: Database, others_move: str
) -> None:
    message, (item, _) = order(client, seed=34)
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    refused = report(provider, task(message, 0, others_move, 2))
    assert refused.status_code == 400, refused.text
    assert (
        f"'{others_move}' is not a status a provider can report" in refused.json()["issue"][0]["diagnostics"]
    )
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "accepted"


def test_the_status_code_system_is_every_status_with_its_definition_and_terminal_flag(
    client: httpx.Client,
) -> None:
    """The CodeSystem integrators code against: every status once, in lifecycle order, and `terminal`
    true for exactly the four that end an item (DESIGN.md §4)."""
    answer = client.get("/fhir/CodeSystem/homecare-status")
    assert answer.status_code == 200
    code_system = answer.json()
    concepts = code_system.pop("concept")
    assert code_system == {
        "resourceType": "CodeSystem",
        "id": "homecare-status",
        "url": HOMECARE_STATUS,
        "name": "HomecareStatus",
        "title": "Homecare prescription status",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "description": (
            "The business status of a homecare prescription line item, as the gateway tracks it "
            "(Task.businessStatus). Terminal codes end the item's lifecycle."
        ),
        "property": [{"code": "terminal", "type": "boolean", "description": "No further status follows"}],
    }
    terminal = {"rejected", "cancelled", "expired", "delivered"}
    assert [concept["code"] for concept in concepts] == [status.value for status in Status]
    for concept in concepts:
        code = concept["code"]
        assert concept == {
            "code": code,
            "display": code.replace("-", " ").capitalize(),
            "definition": DEFINITIONS[Status(code)],
            "property": [{"code": "terminal", "valueBoolean": code in terminal}],
        }
    assert {concept["display"] for concept in concepts} >= {"Out for delivery", "Cancel requested"}
