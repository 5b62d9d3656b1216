"""End to end over real sockets: a trust, the gateway with its dispatcher, a simulated provider that
reports status back as a provider client would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from adapters.fhir_rest.simulator import SimulatorServer
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from gateway.clock import system_clock
from gateway.dispatch.policy import RetryPolicy
from gateway.dispatch.settings import DispatcherSettings
from gateway.dispatch.worker import Dispatcher
from gateway.domain.context import Context
from gateway.domain.expiry import expire_due
from gateway.store.db import Database
from gateway.store.providers import update_provider
from tests.support import RunningServer, Tenant, access_token

FHIR = {"Content-Type": "application/fhir+json"}
FAST = DispatcherSettings(
    poll_seconds=0.02, lease_seconds=5, retry=RetryPolicy(base_seconds=0.05, cap_seconds=0.2, max_attempts=5)
)


@contextmanager
def running_dispatcher(db: Database) -> Iterator[None]:
    """A dispatcher in a thread of its own while the test talks to the gateway."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    dispatcher = Dispatcher(db, clock=system_clock, settings=FAST)

    def run() -> None:
        loop.run_until_complete(dispatcher.run(stop))

    thread = threading.Thread(target=run, name="test-dispatcher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
        loop.close()


@pytest.fixture
def provider_token(server: RunningServer, tenants: dict[str, Tenant]) -> Callable[[], str]:
    return lambda: access_token(server, tenants["provider-vncel"])


@contextmanager
def simulator_for(
    db: Database, server: RunningServer, token: Callable[[], str], **config: Any
) -> Iterator[SimulatorServer]:
    with SimulatorServer(
        "VNCEL", seed=5, status_url=f"{server.base_url}/fhir/Task", status_token_source=token, **config
    ) as simulator:
        with db.write() as session:
            update_provider(
                session,
                "VNCEL",
                now=system_clock(),
                settings={"base_url": simulator.base_url, "timeout_seconds": 5.0},
            )
        yield simulator


def send_order(
    client: httpx.Client, *, items: int, seed: int, **build: Any
) -> tuple[dict[str, Any], list[str]]:
    message = PrescriptionMessageBuilder(seed=seed).build(items=items, **build)
    response = client.post("/fhir/$process-message", content=orjson.dumps(message), headers=FHIR)
    assert response.status_code == 200, response.text
    words = response.json()["issue"][0]["diagnostics"].split()
    return message, [
        w.removeprefix("MedicationRequest/").rstrip(",") for w in words if w.startswith("MedicationRequest/")
    ]


def statuses(client: httpx.Client, item_ids: list[str]) -> list[str]:
    return [
        client.get(f"/fhir/Task/{item}").json()["businessStatus"]["coding"][0]["code"] for item in item_ids
    ]


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.1)


def test_order_to_delivered_through_the_provider_simulator(
    client: httpx.Client, db: Database, server: RunningServer, provider_token: Callable[[], str]
) -> None:
    with (
        simulator_for(db, server, provider_token, step_delay_seconds=0.05) as simulator,
        running_dispatcher(db),
    ):
        _, items = send_order(client, items=2, seed=21)
        wait_until(lambda: statuses(client, items) == ["delivered", "delivered"])
    history = client.get(f"/fhir/Task/{items[0]}/_history").json()
    steps = [entry["resource"]["businessStatus"]["coding"][0]["code"] for entry in history["entry"]]
    assert steps[:3] == ["received", "queued", "sent"]
    assert steps[-1] == "delivered"
    assert {"accepted", "dispensed", "out-for-delivery"} <= set(steps)
    assert all(report.response_status == 200 for report in simulator.status_log())
    found = client.get("/fhir/Task", params={"owner": "VNCEL", "business-status": "delivered"}).json()
    assert sorted(entry["resource"]["id"] for entry in found["entry"]) == sorted(items)


def test_a_cancel_before_dispatch_is_cancelled_at_once(client: httpx.Client, db: Database) -> None:
    message, items = send_order(client, items=2, seed=22)
    cancel = build_cancellation(message)
    response = client.post("/fhir/$process-message", content=orjson.dumps(cancel), headers=FHIR)
    assert response.status_code == 200, response.text
    assert "had not yet received" in response.json()["issue"][0]["diagnostics"]
    assert statuses(client, items) == ["cancelled", "cancelled"]
    with db.read() as session:
        states = [row[0] for row in session.connection().exec_driver_sql("SELECT state FROM outbox")]
    assert states == ["cancelled"], "the order will never be sent"


def test_a_cancel_after_dispatch_is_agreed_by_the_provider(
    client: httpx.Client, db: Database, server: RunningServer, provider_token: Callable[[], str]
) -> None:
    with (
        simulator_for(db, server, provider_token, step_delay_seconds=30) as simulator,
        running_dispatcher(db),
    ):
        message, items = send_order(client, items=1, seed=23)
        wait_until(lambda: statuses(client, items) == ["sent"])
        response = client.post(
            "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
        )
        assert response.status_code == 200, response.text
        assert "Cancelled by the provider" in response.json()["issue"][0]["diagnostics"]
        assert statuses(client, items) == ["cancelled"]
        assert [r.outcome for r in simulator.receipts()] == ["accepted", "cancelled"]


def test_a_cancel_after_the_provider_dispensed_is_refused_with_its_reason(
    client: httpx.Client, db: Database, server: RunningServer, provider_token: Callable[[], str]
) -> None:
    # The provider dispenses but its report has not reached the gateway yet (no status_url).
    with SimulatorServer("VNCEL", seed=6, step_delay_seconds=0.05) as simulator:
        with db.write() as session:
            update_provider(session, "VNCEL", now=system_clock(), settings={"base_url": simulator.base_url})
        with running_dispatcher(db):
            message, items = send_order(client, items=1, seed=24)
            wait_until(lambda: statuses(client, items) == ["sent"])
            wait_until(lambda: all(o.lifecycle_done for o in simulator.orders()))
            response = client.post(
                "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
            )
    assert response.status_code == 409, response.text
    assert "refused the cancellation" in response.json()["issue"][0]["diagnostics"]
    assert statuses(client, items) == ["sent"], "back where it was"


def test_the_gateway_refuses_a_cancel_it_knows_is_too_late(
    client: httpx.Client, db: Database, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, items = send_order(client, items=1, seed=25)
    provider = as_tenant("provider-vncel")
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    for minute, status in enumerate(["accepted", "dispensed"], start=1):
        report = {
            "resourceType": "Task",
            "status": "in-progress",
            "intent": "order",
            "basedOn": [
                {
                    "identifier": {
                        "system": request["groupIdentifier"]["system"],
                        "value": request["groupIdentifier"]["value"],
                    }
                }
            ],
            "businessStatus": {
                "coding": [
                    {"system": "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status", "code": status}
                ]
            },
            "focus": {"identifier": request["identifier"][0]},
            "lastModified": (datetime(2026, 11, 23, 9, tzinfo=UTC) + timedelta(minutes=minute)).isoformat(),
            "owner": {"identifier": request["dispenseRequest"]["performer"]["identifier"]},
        }
        assert provider.post("/fhir/Task", content=orjson.dumps(report), headers=FHIR).status_code == 200
    response = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert response.status_code == 409
    assert "Too late to cancel" in response.json()["issue"][0]["diagnostics"]
    assert statuses(client, items) == ["dispensed"]


def test_a_query_is_answered_and_the_item_resumes(
    client: httpx.Client, db: Database, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, (item,) = send_order(client, items=1, seed=26)
    provider = as_tenant("provider-vncel")
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    base = {
        "resourceType": "Task",
        "status": "in-progress",
        "intent": "order",
        "basedOn": [
            {
                "identifier": {
                    "system": request["groupIdentifier"]["system"],
                    "value": request["groupIdentifier"]["value"],
                }
            }
        ],
        "focus": {"identifier": request["identifier"][0]},
        "owner": {"identifier": request["dispenseRequest"]["performer"]["identifier"]},
    }

    def report(status: str, minute: int, **extra: Any) -> httpx.Response:
        body = (
            base
            | extra
            | {
                "businessStatus": {
                    "coding": [
                        {
                            "system": "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status",
                            "code": status,
                        }
                    ]
                },
                "lastModified": (
                    datetime(2026, 11, 23, 9, tzinfo=UTC) + timedelta(minutes=minute)
                ).isoformat(),
            }
        )
        return provider.post("/fhir/Task", content=orjson.dumps(body), headers=FHIR)

    assert report("accepted", 1).status_code == 200
    assert report("query", 2, note=[{"text": "Please confirm the dose"}]).status_code == 200
    answer = client.post(
        "/fhir/Communication",
        content=orjson.dumps(
            {
                "resourceType": "Communication",
                "status": "completed",
                "about": [{"reference": f"Task/{item}"}],
                "payload": [{"contentString": "Dose confirmed as prescribed"}],
            }
        ),
        headers=FHIR,
    )
    assert answer.status_code == 201, answer.text
    assert statuses(client, [item]) == ["accepted"]
    for reader in (client, provider):
        thread = reader.get("/fhir/Communication", params={"about": f"Task/{item}"}).json()
        texts = [entry["resource"]["payload"][0]["contentString"] for entry in thread["entry"]]
        assert texts == ["Please confirm the dose", "Dose confirmed as prescribed"]
    assert (
        as_tenant("trust-rbb").get("/fhir/Communication", params={"about": f"Task/{item}"}).status_code == 404
    )


def test_a_prescription_past_its_validity_expires(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=27).build(items=1)
    for entry in message["entry"]:
        if entry["resource"]["resourceType"] == "MedicationRequest":
            entry["resource"]["dispenseRequest"]["validityPeriod"] = {
                "start": "2026-01-01",
                "end": "2026-02-01",
            }
    response = client.post("/fhir/$process-message", content=orjson.dumps(message), headers=FHIR)
    assert response.status_code == 200
    item = response.json()["issue"][0]["diagnostics"].split("MedicationRequest/")[1].strip()
    assert expire_due(Context(db), now=system_clock()) == 1
    assert statuses(client, [item]) == ["expired"]
    assert expire_due(Context(db), now=system_clock()) == 0


def provider_report(message: dict[str, Any], status: str, minute: int) -> dict[str, Any]:
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    return {
        "resourceType": "Task",
        "status": "in-progress",
        "intent": "order",
        "basedOn": [{"identifier": {k: request["groupIdentifier"][k] for k in ("system", "value")}}],
        "businessStatus": {
            "coding": [
                {"system": "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status", "code": status}
            ]
        },
        "focus": {"identifier": request["identifier"][0]},
        "lastModified": (datetime(2026, 11, 23, 9, tzinfo=UTC) + timedelta(minutes=minute)).isoformat(),
        "owner": {"identifier": dict(request["dispenseRequest"]["performer"]["identifier"])},
        "note": [{"text": "Please confirm the dose"}],
    }


def test_another_trust_cannot_answer_a_query_about_an_item_it_did_not_send(
    client: httpx.Client, db: Database, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, (item,) = send_order(client, items=1, seed=28)
    provider = as_tenant("provider-vncel")
    for minute, status in enumerate(["accepted", "query"], start=1):
        response = provider.post(
            "/fhir/Task", content=orjson.dumps(provider_report(message, status, minute)), headers=FHIR
        )
        assert response.status_code == 200, response.text
    answer = {
        "resourceType": "Communication",
        "status": "completed",
        "about": [{"reference": f"Task/{item}"}],
        "payload": [{"contentString": "Stop it"}],
    }
    for stranger in ("trust-rbb", "provider-vnfkt"):
        refused = as_tenant(stranger).post("/fhir/Communication", content=orjson.dumps(answer), headers=FHIR)
        assert refused.status_code in (403, 404), (stranger, refused.text)
    assert (
        as_tenant("trust-rbb")
        .post("/fhir/Communication", content=orjson.dumps(answer), headers=FHIR)
        .status_code
        == 404
    ), "another trust's item does not exist for it"
    assert statuses(client, [item]) == ["query"], "still waiting for its own trust's answer"
    thread = client.get("/fhir/Communication", params={"about": f"Task/{item}"}).json()
    assert [entry["resource"]["payload"][0]["contentString"] for entry in thread["entry"]] == [
        "Please confirm the dose"
    ]


def test_another_trust_cannot_cancel_a_prescription_it_did_not_send(
    client: httpx.Client, db: Database, as_tenant: Callable[..., httpx.Client]
) -> None:
    """The cancel names the prescription and line item IDs of trust RBA's order, sent as RBB."""
    message, items = send_order(client, items=1, seed=29)
    cancel = build_cancellation(message)
    cancel["entry"][0]["resource"]["sender"]["identifier"]["value"] = "RBB"
    response = as_tenant("trust-rbb").post(
        "/fhir/$process-message", content=orjson.dumps(cancel), headers=FHIR
    )
    assert response.status_code == 404, response.text
    assert "from this trust" in response.json()["issue"][0]["diagnostics"]
    assert statuses(client, items) == ["queued"]
    with db.read() as session:
        states = [row[0] for row in session.connection().exec_driver_sql("SELECT state FROM outbox")]
    assert states == ["pending"], "the order still goes"
