"""The FHIR REST provider simulator: lifecycle, status Tasks, control API and command line."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime

import httpx
import orjson
import pytest
import uvicorn
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.task import Task
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.fhir_rest.simulator import SimulatorServer, StatusReport
from adapters.simulation.lifecycle import VirtualTime
from fhir_profiles import codes
from fhir_profiles.builder import PrescriptionMessageBuilder
from fhir_profiles.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
)
from tests.adapters.support import item_ids_of, short_form_of, wait_for

HAPPY_PATH = [
    "accepted",
    "in-preparation",
    "dispensed",
    "delivery-scheduled",
    "out-for-delivery",
    "delivered",
]
# The elements every Task in the EPS Prescription Status Update examples carries.
PSU_TASK_ELEMENTS = {
    "resourceType",
    "id",
    "basedOn",
    "status",
    "businessStatus",
    "intent",
    "focus",
    "for",
    "lastModified",
    "owner",
}
# DESIGN §10: the transitions the gateway accepts from a provider (cancellations aside).
ALLOWED = {
    "sent": {"accepted", "rejected", "query"},
    "accepted": {"in-preparation", "dispensed", "query", "rejected"},
    "in-preparation": {"dispensed", "query"},
    "query": {"accepted", "in-preparation", "rejected"},
    "dispensed": {"delivery-scheduled", "out-for-delivery", "delivered"},
    "delivery-scheduled": {"out-for-delivery", "delivered", "delivery-failed"},
    "out-for-delivery": {"delivered", "delivery-failed"},
    "delivery-failed": {"delivery-scheduled", "out-for-delivery"},
}


def post_order(client: httpx.Client, body: bytes, key: str) -> httpx.Response:
    return client.post(
        "/fhir/$process-message",
        content=body,
        headers={"Content-Type": "application/fhir+json", "Idempotency-Key": key},
    )


def statuses_by_item(reports: list[StatusReport]) -> dict[str, list[str]]:
    paths: dict[str, list[str]] = {}
    for report in reports:
        paths.setdefault(report.item_id, []).append(report.status)
    return paths


def test_an_accepted_order_runs_to_delivered_with_psu_shaped_tasks(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    message = builder.build(items=3)
    with httpx.Client(base_url=provider.url, timeout=10) as client:
        assert post_order(client, orjson.dumps(message), "k").status_code == 200
    order = wait_for(
        lambda: (o := provider.order(short_form_of(message))) and o.lifecycle_done and o,
        what="the lifecycle to finish",
    )

    assert order.item_statuses == dict.fromkeys(item_ids_of(message), "delivered")
    reports = provider.status_log()
    assert statuses_by_item(reports) == dict.fromkeys(item_ids_of(message), HAPPY_PATH)
    nhs_number = order.nhs_number
    last_seen: dict[str, datetime] = {}
    for report in reports:
        assert report.task.keys() >= PSU_TASK_ELEMENTS
        task = Task.model_validate(report.task)
        assert task.intent == "order"
        assert task.basedOn[0].identifier.system == PRESCRIPTION_ORDER_NUMBER_SYSTEM
        assert task.basedOn[0].identifier.value == short_form_of(message)
        assert task.focus.identifier.system == ORDER_ITEM_NUMBER_SYSTEM
        assert task.focus.identifier.value == report.item_id
        assert (task.for_fhir.identifier.system, task.for_fhir.identifier.value) == (
            NHS_NUMBER_SYSTEM,
            nhs_number,
        )
        assert (task.owner.identifier.system, task.owner.identifier.value) == (ODS_SYSTEM, "VNCEL")
        [coding] = task.businessStatus.coding
        assert (coding.system, coding.code) == (codes.HOMECARE_STATUS_SYSTEM, report.status)
        assert task.lastModified > last_seen.get(
            report.item_id, datetime.min.replace(tzinfo=task.lastModified.tzinfo)
        )
        last_seen[report.item_id] = task.lastModified
        assert report.target is None and report.attempts == 0
    final = [Task.model_validate(r.task) for r in reports if r.status == "delivered"]
    assert {task.status for task in final} == {"completed"}
    scheduled = next(r.task for r in reports if r.status == "delivery-scheduled")
    window = next(o for o in scheduled["output"] if o["type"]["coding"][0]["code"] == "delivery-window")
    assert window["valuePeriod"]["start"] < window["valuePeriod"]["end"]


def run_seeded(seed: int, messages: list[bytes]) -> dict[str, list[tuple[str, str, str | None, int | None]]]:
    """Send `messages` to a fresh simulator on virtual time and return each item's reported path."""
    with SimulatorServer(
        seed=seed,
        time_source=VirtualTime(),
        step_delay_seconds=3600,
        lifecycle_reject_rate=0.2,
        query_rate=0.3,
        delivery_failure_rate=0.4,
        reject_rate=0.1,
    ) as provider:
        with httpx.Client(base_url=provider.url, timeout=10) as client:
            for number, body in enumerate(messages):
                assert post_order(client, body, f"k{number}").status_code in (200, 422)
        wait_for(
            lambda: all(order.lifecycle_done for order in provider.orders()),
            what="every lifecycle to finish",
        )
        paths: dict[str, list[tuple[str, str, str | None, int | None]]] = {}
        for report in provider.status_log():
            reason = report.task.get("statusReason", {}).get("coding", [{}])[0].get("code")
            attempt = next(
                (o["valueInteger"] for o in report.task.get("output", []) if "valueInteger" in o), None
            )
            paths.setdefault(report.short_form_id, []).append(
                (report.item_id, report.status, reason, attempt)
            )
        for receipt in provider.receipts():
            if receipt.outcome == "refused":
                paths[f"refused {receipt.idempotency_key}"] = []
        return paths


def test_a_seeded_run_with_failure_rates_repeats_whatever_the_arrival_order() -> None:
    builder = PrescriptionMessageBuilder(seed=99)
    messages = [orjson.dumps(builder.build(items=1 + n % 3)) for n in range(12)]

    first = run_seeded(7, messages)
    second = run_seeded(7, list(reversed(messages)))

    assert {k: v for k, v in first.items() if not k.startswith("refused")} == {
        k: v for k, v in second.items() if not k.startswith("refused")
    }
    seen = {status for path in first.values() for _, status, _, _ in path}
    assert {"rejected", "query", "delivery-failed", "delivered"} <= seen
    assert run_seeded(8, messages) != first


@pytest.mark.parametrize("seed", range(6))
def test_every_reported_path_is_one_the_gateway_accepts(seed: int) -> None:
    builder = PrescriptionMessageBuilder(seed=seed)
    messages = [orjson.dumps(builder.build(items=4)) for _ in range(5)]
    for path in run_seeded(seed, messages).values():
        per_item: dict[str, list[str]] = {}
        for item, status, _, _ in path:
            per_item.setdefault(item, ["sent"]).append(status)
        for statuses in per_item.values():
            for before, after in itertools.pairwise(statuses):
                assert after in ALLOWED[before], f"{before} -> {after} in {statuses}"


def test_failed_deliveries_carry_the_reason_and_who_caused_it(builder: PrescriptionMessageBuilder) -> None:
    with SimulatorServer(
        time_source=VirtualTime(), step_delay_seconds=600, delivery_failure_rate=1.0, max_delivery_attempts=2
    ) as provider:
        message = builder.build(items=1)
        with httpx.Client(base_url=provider.url, timeout=10) as client:
            assert post_order(client, orjson.dumps(message), "k").status_code == 200
        order = wait_for(
            lambda: (o := provider.order(short_form_of(message))) and o.lifecycle_done and o,
            what="the lifecycle to finish",
        )

    reports = provider.status_log()
    assert [r.status for r in reports] == [
        *HAPPY_PATH[:-1],
        "delivery-failed",
        "delivery-scheduled",
        "out-for-delivery",
        "delivery-failed",
    ]
    assert set(order.item_statuses.values()) == {"delivery-failed"}
    for report in (r for r in reports if r.status == "delivery-failed"):
        task = Task.model_validate(report.task)
        assert task.status == "failed"
        assert task.statusReason.coding[0].system == codes.STATUS_REASON_SYSTEM
        assert task.statusReason.text
        [party] = task.extension
        assert party.url == codes.RESPONSIBLE_PARTY_URL
        assert party.valueCoding.code in {"patient", "trust", "provider", "courier"}
        attempts = [o.valueInteger for o in task.output if o.type.coding[0].code == "delivery-attempt"]
        assert attempts in ([1], [2])


class StatusReceiver:
    """A stand-in for the gateway's future status intake: records Tasks, fails the first request."""

    def __init__(self) -> None:
        self.tasks: list[dict[str, object]] = []
        self.authorizations: set[str | None] = set()
        self.requests = 0
        self._lock = threading.Lock()

        async def receive(request: Request) -> Response:
            with self._lock:
                self.requests += 1
                if self.requests == 1:
                    return Response(status_code=503)
                self.tasks.append(orjson.loads(await request.body()))
                self.authorizations.add(request.headers.get("authorization"))
            return Response(status_code=201)

        config = uvicorn.Config(
            Starlette(routes=[Route("/fhir/Task", receive, methods=["POST"])]),
            host="127.0.0.1",
            port=0,
            log_config=None,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StatusReceiver:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=15, what="the status receiver")
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/fhir/Task"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def status_receiver() -> Iterator[StatusReceiver]:
    with StatusReceiver() as receiver:
        yield receiver


def test_status_tasks_are_posted_in_order_with_a_token_and_retried(
    status_receiver: StatusReceiver, builder: PrescriptionMessageBuilder
) -> None:
    with SimulatorServer(
        step_delay_seconds=0.01,
        status_url=status_receiver.url,
        status_token="status-token",
        status_retry_seconds=0.01,
    ) as provider:
        message = builder.build(items=1)
        with httpx.Client(base_url=provider.url, timeout=10) as client:
            assert post_order(client, orjson.dumps(message), "k").status_code == 200
        wait_for(lambda: len(status_receiver.tasks) == len(HAPPY_PATH), what="every status Task to be posted")
        reports = wait_for(
            lambda: (log := provider.status_log()) and all(r.posted for r in log) and log,
            what="the status log to show every Task posted",
        )

    assert [t["businessStatus"]["coding"][0]["code"] for t in status_receiver.tasks] == HAPPY_PATH
    assert status_receiver.authorizations == {"Bearer status-token"}
    assert reports[0].attempts == 2
    assert all(r.attempts == 1 for r in reports[1:])
    assert {r.target for r in reports} == {status_receiver.url}


def test_the_control_api_changes_behaviour_and_shows_state(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    message = builder.build(items=2)
    with httpx.Client(base_url=provider.url, timeout=10) as client:
        changed = client.post("/_simulator/config", json={"down": True, "required_token": "t"})
        assert changed.status_code == 200
        assert changed.json()["down"] is True
        assert changed.json()["required_token_set"] is True
        assert "required_token" not in changed.json()
        assert client.get("/fhir/metadata").status_code == 503
        refused = client.post("/_simulator/config", json={"reject_rate": 2, "no_such_knob": 1})
        assert refused.status_code == 422
        assert {p["loc"][0] for p in refused.json()["problems"]} == {"reject_rate", "no_such_knob"}
        client.post("/_simulator/config", json={"down": False, "required_token": None})

        metadata = client.get("/fhir/metadata")
        assert metadata.status_code == 200
        CapabilityStatement.model_validate(metadata.json())

        body = orjson.dumps(message)
        assert post_order(client, body, "k").status_code == 200
        assert post_order(client, body, "k").status_code == 200
        wait_for(lambda: client.get("/_simulator/orders").json()[0]["lifecycle_done"], what="the lifecycle")

        [order] = client.get("/_simulator/orders").json()
        assert order["short_form_id"] == short_form_of(message)
        assert order["receipts"] == 2
        assert set(order["item_statuses"].values()) == {"delivered"}
        raw = client.get(f"/_simulator/orders/{short_form_of(message)}/message")
        assert raw.content == body
        receipts = client.get("/_simulator/receipts").json()
        assert receipts["counts"] == {"k": 2}
        assert [r["outcome"] for r in receipts["receipts"]] == ["accepted", "duplicate"]
        log = client.get("/_simulator/status-log").json()
        assert len(log) == 2 * len(HAPPY_PATH)
        Task.model_validate(log[0]["task"])

        assert client.post("/_simulator/reset").status_code == 204
        assert client.get("/_simulator/orders").json() == []
        assert client.get("/_simulator/receipts").json() == {"receipts": [], "counts": {}}
        assert client.get("/_simulator/status-log").json() == []


def test_orders_without_an_idempotency_key_or_in_the_wrong_media_type_are_refused(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    body = orjson.dumps(builder.build())
    with httpx.Client(base_url=provider.url, timeout=10) as client:
        no_key = client.post(
            "/fhir/$process-message", content=body, headers={"Content-Type": "application/fhir+json"}
        )
        wrong_type = client.post(
            "/fhir/$process-message",
            content=body,
            headers={"Content-Type": "text/plain", "Idempotency-Key": "k"},
        )
    assert no_key.status_code == 400
    assert no_key.json()["issue"][0]["details"]["coding"][0]["code"] == "missing-idempotency-key"
    assert wrong_type.status_code == 415
    assert provider.orders() == []


def test_the_command_line_starts_a_simulator_and_says_where() -> None:
    command = [
        sys.executable,
        "-m",
        "adapters.fhir_rest.simulator",
        "--port",
        "0",
        "--ods",
        "FCG71",
        "--seed",
        "3",
        "--reject-rate",
        "0.5",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            first_line = process.stdout.readline()
            assert "FCG71" in first_line
            base_url = first_line.rsplit(" ", 1)[-1].strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/fhir")
            config = wait_for(
                lambda: _config_or_none(base_url.removesuffix("/fhir")), what="the simulator to answer"
            )
            assert (config["ods"], config["seed"], config["reject_rate"]) == ("FCG71", 3, 0.5)
        finally:
            process.terminate()
            process.wait(timeout=15)


def _config_or_none(url: str) -> dict[str, object] | None:
    try:
        return httpx.get(f"{url}/_simulator/config", timeout=2).json()
    except httpx.TransportError:
        return None
