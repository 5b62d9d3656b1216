"""`hl7v2-mllp` end to end: a trust over HTTP, the real gateway (API, dispatcher, MLLP listener) on
SQLite and PostgreSQL, and the MLLP provider simulator on real sockets sending status back."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from adapters.hl7v2_mllp.framing import END_BLOCK, START_BLOCK, frame
from adapters.hl7v2_mllp.messages import read_ack
from adapters.hl7v2_mllp.simulator import MllpSimulatorServer, status_message
from adapters.simulation.order_book import LifecycleEvent
from fhir_profiles.builder import build_cancellation
from gateway.runner import Runtime
from gateway.settings import Settings
from gateway.store.db import Database
from tests.e2e_support import (
    HAPPY_PATH,
    applied_statuses,
    dispenses_of,
    history,
    item_identifiers_of,
    rows,
    scalar,
    short_form_of,
)
from tests.runtime_support import running_gateway, use_adapter
from tests.support import free_port
from tests.test_lifecycle_e2e import FHIR, send_order, statuses, wait_until


@pytest.fixture
def gateway(db: Database, settings: Settings) -> Iterator[Runtime]:
    with running_gateway(db, settings) as runtime:
        yield runtime


def listener_port(runtime: Runtime) -> int:
    assert runtime.status_sources.mllp_address is not None, "the MLLP listener is open"
    return runtime.status_sources.mllp_address[1]


def connect_provider(db: Database, provider: MllpSimulatorServer, ods: str = "VNCEL") -> None:
    use_adapter(
        db,
        ods,
        "hl7v2-mllp",
        {
            "host": "127.0.0.1",
            "port": provider.port,
            "ack_timeout_seconds": 2,
            "connect_timeout_seconds": 2,
            "inbound_allowed_addresses": "127.0.0.1/32",
        },
    )


@pytest.fixture
def provider(gateway: Runtime, db: Database) -> Iterator[MllpSimulatorServer]:
    with MllpSimulatorServer(
        "VNCEL",
        seed=11,
        step_delay_seconds=0.02,
        status_port=listener_port(gateway),
        status_retry_seconds=0.05,
    ) as simulator:
        connect_provider(db, simulator)
        yield simulator


def exchange(port: int, *messages: str | bytes) -> list[bytes]:
    """Send each message to the gateway's listener on one connection and read each ACK."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        answers = []
        for message in messages:
            connection.sendall(frame(message))
            received = b""
            while not received.endswith(END_BLOCK):
                chunk = connection.recv(65536)
                assert chunk, "the listener closed the connection"
                received += chunk
            answers.append(received.removeprefix(START_BLOCK).removesuffix(END_BLOCK))
        return answers


def test_an_order_goes_out_as_rde_o11_and_comes_back_delivered_through_the_listener(
    client: httpx.Client, db: Database, provider: MllpSimulatorServer
) -> None:
    message, items = send_order(client, items=2, seed=101)
    wait_until(lambda: statuses(client, items) == ["delivered", "delivered"])
    for item in items:
        assert applied_statuses(client, item) == ["received", "queued", "sent", *HAPPY_PATH]
        sources = {source for status, source, _ in history(client, item) if status in HAPPY_PATH}
        assert sources == {"provider:VNCEL"}
    (dispense,) = dispenses_of(client, items[0])
    assert dispense["medicationCodeableConcept"], "the prescribed medicine, as the provider named none"
    assert dispense["extension"][0]["extension"][0]["valueString"].startswith("BATCH-")
    (order,) = provider.orders()
    assert order.short_form_id == short_form_of(message)
    assert sorted(order.item_ids) == sorted(item_identifiers_of(message))
    stored = scalar(db, "SELECT count(*) FROM provider_message WHERE provider_ods = 'VNCEL'")
    assert stored == len(provider.status_log())
    assert {status.ack_code for status in provider.status_log()} == {"AA"}


def test_an_order_the_provider_refuses_is_rejected_with_its_reason(
    client: httpx.Client, provider: MllpSimulatorServer
) -> None:
    provider.configure(reject_rate=1.0)
    _, (item,) = send_order(client, items=1, seed=102)
    wait_until(lambda: statuses(client, [item]) == ["rejected"])
    rejection = client.get(f"/fhir/Task/{item}/_history").json()["entry"][-1]["resource"]
    assert rejection["statusReason"]["text"], "the provider's reason (ERR-8) is in the timeline"
    assert [status for status, _, _ in history(client, item)] == ["received", "queued", "rejected"]


def test_an_unreachable_provider_is_retried_until_it_is_back(
    client: httpx.Client, db: Database, gateway: Runtime, settings: Settings
) -> None:
    port = free_port()
    use_adapter(
        db,
        "VNCEL",
        "hl7v2-mllp",
        {
            "host": "127.0.0.1",
            "port": port,
            "connect_timeout_seconds": 1,
            "inbound_allowed_addresses": "127.0.0.1",
        },
    )
    _, (item,) = send_order(client, items=1, seed=103)
    wait_until(lambda: scalar(db, "SELECT max(attempts) FROM outbox") >= 2)
    assert statuses(client, [item]) == ["queued"]
    with MllpSimulatorServer(
        "VNCEL", port=port, seed=11, step_delay_seconds=0.02, status_port=listener_port(gateway)
    ):
        wait_until(lambda: statuses(client, [item]) == ["delivered"])
    errors = rows(db, "SELECT last_error FROM outbox")
    assert errors == [(None,)], "done, and the errors of the failed attempts cleared"


def test_malformed_status_messages_get_a_reasoned_answer_and_change_nothing(
    client: httpx.Client, db: Database, gateway: Runtime
) -> None:
    connect_provider_at(db, 1)
    _, (item,) = send_order(client, items=1, seed=104)
    not_hl7, no_orc = exchange(
        listener_port(gateway),
        b"this is not HL7 at all",
        "MSH|^~\\&|PHARMACY|VNCEL|HOMECARE-GATEWAY|HOMECARE-GATEWAY|20261123090000||ORR^O02^ORR_O02|C1|P|2.5",
    )
    assert read_ack(not_hl7).code == "AR"
    answer = read_ack(no_orc)
    assert answer.code in ("AE", "AR") and answer.reason, "a reason, and the connection stayed open"
    assert scalar(db, "SELECT count(*) FROM provider_message") == 0
    assert statuses(client, [item]) == ["queued"]


def connect_provider_at(db: Database, port: int) -> None:
    use_adapter(
        db,
        "VNCEL",
        "hl7v2-mllp",
        {
            "host": "127.0.0.1",
            "port": port,
            "connect_timeout_seconds": 1,
            "inbound_allowed_addresses": "127.0.0.1",
        },
    )


def status_about(message: dict[str, object], status: str, *, control_id: str, minute: int) -> str:
    return status_message(
        "VNCEL",
        "ORR^O02",
        control_id,
        [
            LifecycleEvent(
                sequence=minute,
                order_key="k",
                short_form_id=short_form_of(message),  # type: ignore[arg-type]
                item_id=item_identifiers_of(message)[0],  # type: ignore[arg-type]
                status=status,
                occurred_at=datetime(2026, 11, 23, 9, minute, tzinfo=UTC),
            )
        ],
    )


def test_a_repeated_control_id_is_acknowledged_and_applied_once(
    client: httpx.Client, db: Database, provider: MllpSimulatorServer, gateway: Runtime
) -> None:
    provider.configure(lifecycle=False)
    message, (item,) = send_order(client, items=1, seed=105)
    wait_until(lambda: statuses(client, [item]) == ["sent"])
    accepted = status_about(message, "accepted", control_id="DUP-1", minute=1)
    first, again = exchange(listener_port(gateway), accepted, accepted)
    assert read_ack(first).code == "AA"
    assert read_ack(again).code == "AA" and "duplicate" in (read_ack(again).reason or "")
    assert [s for s, source, _ in history(client, item) if source == "provider:VNCEL"] == ["accepted"]
    assert (
        scalar(db, "SELECT count(*) FROM provider_message WHERE dedupe_key = 'hl7v2-mllp/VNCEL/DUP-1'") == 1
    )


def test_status_about_another_providers_prescription_is_refused(
    client: httpx.Client, db: Database, provider: MllpSimulatorServer, gateway: Runtime
) -> None:
    message, (item,) = send_order(client, items=1, seed=106, performer_ods="VNFKT")
    answer = read_ack(
        exchange(listener_port(gateway), status_about(message, "accepted", control_id="X1", minute=1))[0]
    )
    assert answer.code == "AE"
    assert "not routed to VNCEL" in (answer.reason or "")
    assert statuses(client, [item]) == ["queued"]
    assert scalar(db, "SELECT count(*) FROM provider_message") == 0
    refusals = rows(
        db, "SELECT reason FROM audit_event WHERE client_id = 'hl7v2-mllp' AND outcome = 'refused'"
    )
    assert refusals == [("not-routed",)]


def test_an_illegal_move_is_refused_whole_and_can_be_sent_again_once_legal(
    client: httpx.Client, db: Database, provider: MllpSimulatorServer, gateway: Runtime
) -> None:
    provider.configure(lifecycle=False)
    message, (item,) = send_order(client, items=1, seed=107)
    wait_until(lambda: statuses(client, [item]) == ["sent"])
    delivered = status_about(message, "delivered", control_id="EARLY", minute=5)
    answer = read_ack(exchange(listener_port(gateway), delivered)[0])
    assert answer.code == "AE" and "cannot become 'delivered'" in (answer.reason or "")
    assert statuses(client, [item]) == ["sent"]


def test_a_cancellation_waits_for_the_providers_answer_that_follows_the_ack(
    client: httpx.Client, db: Database, provider: MllpSimulatorServer
) -> None:
    provider.configure(step_delay_seconds=30)
    message, (item,) = send_order(client, items=1, seed=108)
    wait_until(lambda: statuses(client, [item]) == ["sent"])
    response = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert response.status_code in (200, 202), response.text
    wait_until(lambda: statuses(client, [item]) == ["cancelled"])
    steps = [(status, source) for status, source, _ in history(client, item)]
    assert steps[-2:] == [("cancel-requested", "trust:RBA"), ("cancelled", "provider:VNCEL")]
    assert scalar(db, "SELECT count(*) FROM outbox WHERE kind = 'cancel' AND state = 'done'") == 1


def test_a_provider_not_allowed_from_this_address_cannot_report(
    client: httpx.Client, db: Database, gateway: Runtime
) -> None:
    use_adapter(
        db,
        "VNCEL",
        "hl7v2-mllp",
        {"host": "127.0.0.1", "port": 1, "inbound_allowed_addresses": "203.0.113.0/28"},
    )
    message, (item,) = send_order(client, items=1, seed=109)
    answer = read_ack(
        exchange(
            listener_port(gateway),
            status_about(message, "accepted", control_id=str(uuid.uuid4())[:20], minute=1),
        )[0]
    )
    assert answer.code == "AR"
    assert statuses(client, [item]) == ["queued"]
