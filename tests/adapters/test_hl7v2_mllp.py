"""The `hl7v2-mllp` adapter, its listener and its simulator, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from adapters.base import AdapterTransportError, SendOutcome
from adapters.hl7v2_mllp.codec import Hl7Error, control_id, parse
from adapters.hl7v2_mllp.framing import frame, read_frame
from adapters.hl7v2_mllp.listener import MllpListener
from adapters.hl7v2_mllp.messages import read_ack
from adapters.hl7v2_mllp.reports import read_status_message
from adapters.hl7v2_mllp.settings import Hl7v2MllpSettings, MllpListenerSettings
from adapters.hl7v2_mllp.simulator import MllpSimulatorServer, status_message
from adapters.inbound import ReportKind
from adapters.order_content import OrderNotExpressible
from adapters.simulation.order_book import LifecycleEvent
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from tests.adapters.report_store import SqliteReportStore
from tests.adapters.support import adapter_for, eventually, item_ids_of, order_for, short_form_of
from tests.support import FIXTURES, free_port

LONDON = ZoneInfo("Europe/London")
HAPPY_PATH = [
    "accepted",
    "in-preparation",
    "dispensed",
    "delivery-scheduled",
    "out-for-delivery",
    "delivered",
]


@pytest.fixture
def store(tmp_path: Path) -> SqliteReportStore:
    return SqliteReportStore(tmp_path / "inbound.sqlite")


@pytest.fixture
async def listener(store: SqliteReportStore) -> AsyncIterator[tuple[MllpListener, int]]:
    providers = {
        "VNCEL": Hl7v2MllpSettings(host="127.0.0.1", port=1, inbound_allowed_addresses=("127.0.0.0/8",))
    }
    server = MllpListener(
        MllpListenerSettings(port=0, idle_timeout_seconds=30), sink=store, providers=providers.get
    )
    _, port = await server.start()
    yield server, port
    await server.aclose()


@pytest.fixture
def provider() -> Iterator[MllpSimulatorServer]:
    with MllpSimulatorServer("VNCEL", seed=1, step_delay_seconds=0.01, status_retry_seconds=0.05) as server:
        yield server


def settings_for(server: MllpSimulatorServer, **extra: object) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": server.port, **extra}


async def exchange(port: int, *messages: str | bytes) -> list[bytes]:
    """Send each message on one connection and read each ACK."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for message in messages:
            writer.write(frame(message))
            await writer.drain()
            received = await asyncio.wait_for(read_frame(reader), 10)
            assert received is not None, "the listener closed the connection"
            answers.append(received.payload)
    finally:
        writer.close()
    return answers


def orr(
    control: str, events: list[LifecycleEvent], *, ods: str = "VNCEL", message_type: str = "ORR^O02"
) -> str:
    return status_message(ods, message_type, control, events)


def event(short_form: str, item: str, status: str, **extra: object) -> LifecycleEvent:
    return LifecycleEvent(1, "k", short_form, item, status, datetime(2026, 11, 23, 9, 0, tzinfo=UTC), **extra)  # type: ignore[arg-type]


# --- the order message ------------------------------------------------------------------------------


def test_an_order_is_one_rde_o11_with_an_orc_group_per_line_item(builder: PrescriptionMessageBuilder) -> None:
    from adapters.hl7v2_mllp.messages import Parties, build_order_message
    from adapters.order_content import read_order_content

    message = builder.build(items=2)
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    text = build_order_message(
        read_order_content(order_for(message)),
        control_id=control_id("order-1"),
        parties=Parties("HOMECARE-GATEWAY", "HG", "PHARMACY", "VNCEL"),
        now=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
    )
    parsed = parse(text.encode())
    assert [s.name for s in parsed.segments] == ["MSH", "PID", *(["ORC", "RXE", "NTE", "TQ1", "RXR"] * 2)]
    assert parsed.message_type == "RDE^O11"
    assert parsed.msh.field(12) == "2.5"
    assert parsed.msh.component(6) == "VNCEL" and parsed.msh.component(4) == "HG"
    assert parsed.control_id == control_id("order-1") and len(parsed.control_id) == 20
    pid = parsed.named("PID")[0]
    assert pid.field(3) == f"{patient['identifier'][0]['value']}^^^NHS^NH"
    assert pid.component(5, 1) == patient["name"][0]["family"]
    assert pid.field(7) == patient["birthDate"].replace("-", "")
    assert pid.component(11, 5) == "ZZ99 3AZ"
    orcs = parsed.named("ORC")
    assert [orc.component(2) for orc in orcs] == item_ids_of(message)
    assert {orc.component(4) for orc in orcs} == {short_form_of(message)}
    assert {orc.field(1) for orc in orcs} == {"NW"}
    rxe = parsed.named("RXE")[0]
    medication = message["entry"][1]["resource"]["medicationCodeableConcept"]["coding"][0]
    assert rxe.component(2, 1) == medication["code"] and rxe.component(2, 3) == "SCT"
    assert rxe.field(10) == "2"
    assert parsed.named("NTE")[0].field(3) == "Inject one dose every two weeks"
    assert parsed.named("TQ1")[0].field(3) == "Q2W"
    assert parsed.named("RXR")[0].component(1) == "34206005"


def test_the_control_id_is_stable_for_a_key_and_differs_between_keys() -> None:
    assert control_id("order-a") == control_id("order-a")
    assert control_id("order-a") != control_id("order-b")


def test_a_cancellation_is_orc_ca_with_the_trusts_reason(builder: PrescriptionMessageBuilder) -> None:
    from adapters.hl7v2_mllp.messages import Parties, build_order_message
    from adapters.order_content import read_order_content

    message = builder.build(items=2)
    cancel = build_cancellation(message, item_positions=[1])
    content = read_order_content(order_for(cancel, kind="cancel"))
    parsed = parse(
        build_order_message(
            content, control_id="C1", parties=Parties("a", "b", "c", "VNCEL"), now=datetime.now(UTC)
        ).encode()
    )
    (orc,) = parsed.named("ORC")
    assert orc.field(1) == "CA"
    assert orc.component(2) == item_ids_of(message)[1]
    assert (orc.component(16, 1), orc.component(16, 2)) == ("0001", "Prescribing Error")


def test_free_text_with_hl7_delimiters_is_escaped(builder: PrescriptionMessageBuilder) -> None:
    from adapters.hl7v2_mllp.messages import Parties, build_order_message
    from adapters.order_content import read_order_content

    message = builder.build(items=1)
    message["entry"][1]["resource"]["dosageInstruction"][0]["text"] = (
        "Inject | one ^ dose & wait ~ \\ two weeks"
    )
    text = build_order_message(
        read_order_content(order_for(message)),
        control_id="C",
        now=datetime.now(UTC),
        parties=Parties("a", "b", "c", "VNCEL"),
    )
    assert parse(text.encode()).named("NTE")[0].component(3) == "Inject | one ^ dose & wait ~ \\ two weeks"


def test_a_message_that_is_not_a_prescription_order_cannot_be_expressed(
    builder: PrescriptionMessageBuilder,
) -> None:
    from adapters.order_content import read_order_content

    with pytest.raises(OrderNotExpressible):
        read_order_content(order_for(builder.build(), body=b"{not json"))


# --- sending over MLLP ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_order_is_acknowledged_and_the_lifecycle_comes_back_through_the_listener(
    builder: PrescriptionMessageBuilder, store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    message = builder.build(items=2)
    store.routes[short_form_of(message)] = "VNCEL"
    with MllpSimulatorServer("VNCEL", seed=1, step_delay_seconds=0.01, status_port=listener[1]) as provider:
        async with adapter_for("hl7v2-mllp", **settings_for(provider)) as adapter:
            result = await adapter.send(order_for(message), idempotency_key="order-1")
        assert result.outcome is SendOutcome.DELIVERED and result.answer_follows
        assert provider.order(short_form_of(message)) is not None
        for item in item_ids_of(message):
            await eventually(lambda item=item: store.statuses(item)[-1:] == ["delivered"], what="delivered")
            assert store.statuses(item) == HAPPY_PATH
        assert all(sent.ack_code == "AA" for sent in provider.status_log())
    dispensed = [report for report in store.reports() if report["status"] == "dispensed"]
    assert dispensed and all(report["dispense"]["batch"] for report in dispensed)  # type: ignore[index]


@pytest.mark.anyio
async def test_a_resend_with_the_same_key_is_one_order_at_the_provider(
    builder: PrescriptionMessageBuilder, provider: MllpSimulatorServer
) -> None:
    message = builder.build()
    async with adapter_for("hl7v2-mllp", **settings_for(provider)) as adapter:
        first = await adapter.send(order_for(message), idempotency_key="order-1")
        again = await adapter.send(order_for(message), idempotency_key="order-1")
    assert first.is_delivered and again.is_delivered
    assert len(provider.orders()) == 1
    assert provider.receipt_counts() == {control_id("order-1"): 2}


@pytest.mark.anyio
async def test_a_provider_refusal_is_a_rejection_with_its_reason(builder: PrescriptionMessageBuilder) -> None:
    with MllpSimulatorServer("VNCEL", reject_rate=1.0, lifecycle=False) as provider:
        async with adapter_for("hl7v2-mllp", **settings_for(provider)) as adapter:
            result = await adapter.send(order_for(builder.build()), idempotency_key="order-1")
    assert result.outcome is SendOutcome.REJECTED
    assert result.reason is not None and result.reason.split(":")[0] in {
        "Out of stock",
        "Patient not registered with this provider",
        "This provider is not commissioned to supply this service",
    }
    assert result.code in {"out-of-stock", "patient-not-registered", "service-not-commissioned"}


@pytest.mark.anyio
async def test_an_order_for_another_provider_is_rejected(builder: PrescriptionMessageBuilder) -> None:
    with MllpSimulatorServer("OTHER1", lifecycle=False) as provider:
        async with adapter_for("hl7v2-mllp", **settings_for(provider)) as adapter:
            result = await adapter.send(order_for(builder.build()), idempotency_key="order-1")
    assert result.outcome is SendOutcome.REJECTED
    assert "another homecare provider" in (result.reason or "")


@pytest.mark.anyio
async def test_an_unreachable_provider_is_retried_and_reached_when_back(
    builder: PrescriptionMessageBuilder,
) -> None:
    port = free_port()
    message = builder.build()
    async with adapter_for("hl7v2-mllp", host="127.0.0.1", port=port, connect_timeout_seconds=2) as adapter:
        with pytest.raises(AdapterTransportError, match="unreachable"):
            await adapter.send(order_for(message), idempotency_key="order-1")
        with MllpSimulatorServer("VNCEL", port=port, lifecycle=False) as provider:
            result = await adapter.send(order_for(message), idempotency_key="order-1")
            assert result.is_delivered
            provider.configure(down=True)
            with pytest.raises(AdapterTransportError):
                await adapter.send(order_for(message), idempotency_key="order-1")
            provider.configure(down=False)
            assert (await adapter.send(order_for(message), idempotency_key="order-1")).is_delivered
            assert len(provider.orders()) == 1


@pytest.mark.anyio
async def test_a_provider_restart_between_sends_is_survived_on_the_reused_connection(
    builder: PrescriptionMessageBuilder,
) -> None:
    port = free_port()
    async with adapter_for("hl7v2-mllp", host="127.0.0.1", port=port) as adapter:
        with MllpSimulatorServer("VNCEL", port=port, lifecycle=False):
            assert (await adapter.send(order_for(builder.build()), idempotency_key="order-1")).is_delivered
        with MllpSimulatorServer("VNCEL", port=port, lifecycle=False) as again:
            assert (await adapter.send(order_for(builder.build()), idempotency_key="order-2")).is_delivered
            assert len(again.orders()) == 1


@pytest.mark.anyio
async def test_no_ack_in_time_is_retried_and_never_mistaken_for_the_next_answer(
    builder: PrescriptionMessageBuilder, provider: MllpSimulatorServer
) -> None:
    provider.configure(no_ack_next=1, lifecycle=False)
    async with adapter_for("hl7v2-mllp", **settings_for(provider, ack_timeout_seconds=0.3)) as adapter:
        with pytest.raises(AdapterTransportError, match=r"no ACK within 0\.3 s"):
            await adapter.send(order_for(builder.build()), idempotency_key="order-1")
        provider.configure(delay_seconds=0.5)
        with pytest.raises(AdapterTransportError, match="no ACK"):
            await adapter.send(order_for(builder.build()), idempotency_key="order-2")
        provider.configure(delay_seconds=0)
        await asyncio.sleep(0.6)  # the late ACK of order-2 is sent on the closed connection
        result = await adapter.send(order_for(builder.build()), idempotency_key="order-3")
    assert result.is_delivered


@pytest.mark.anyio
async def test_an_internal_error_at_the_provider_is_retried(
    builder: PrescriptionMessageBuilder, provider: MllpSimulatorServer
) -> None:
    provider.configure(fail_next=1, lifecycle=False)
    async with adapter_for("hl7v2-mllp", **settings_for(provider)) as adapter:
        with pytest.raises(AdapterTransportError, match="could not take the order now"):
            await adapter.send(order_for(builder.build()), idempotency_key="order-1")
        assert (await adapter.send(order_for(builder.build()), idempotency_key="order-2")).is_delivered


@pytest.mark.anyio
async def test_a_cancellation_is_acknowledged_and_its_answer_follows_as_a_status(
    builder: PrescriptionMessageBuilder, store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    message = builder.build(items=2)
    store.routes[short_form_of(message)] = "VNCEL"
    with MllpSimulatorServer("VNCEL", lifecycle=False, status_port=listener[1]) as provider:
        async with adapter_for("hl7v2-mllp", **settings_for(provider)) as adapter:
            assert (await adapter.send(order_for(message), idempotency_key="order-1")).is_delivered
            cancel = order_for(build_cancellation(message), kind="cancel")
            result = await adapter.send(cancel, idempotency_key="cancel-1")
        assert result.is_delivered and result.answer_follows
        for item in item_ids_of(message):
            await eventually(lambda item=item: store.statuses(item) == ["cancelled"], what="cancelled")


# --- the listener -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_malformed_messages_get_a_reasoned_ack_and_the_connection_stays_open(
    store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    good = orr("GOOD1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")])
    no_short_form = good.replace("ORC|OK|item-1||A1B2C3-A99968-D0E87S|", "ORC|OK|item-1|||")
    unknown_status = good.replace("ORC|OK|", "ORC|XX|")
    answers = await exchange(
        listener[1],
        b"this is not HL7 at all",
        good.replace("|2.5", "|9.9"),
        good.replace("ORR^O02^ORR_O02", "RDE^O11^RDE_O11"),
        no_short_form,
        unknown_status,
        good,
    )
    acks = [read_ack(answer) for answer in answers]
    assert [ack.code for ack in acks] == ["AR", "AR", "AR", "AE", "AE", "AA"]
    assert "does not start with an MSH" in (acks[0].reason or "")
    assert acks[1].error_code == "203"
    assert "not a status message" in (acks[2].reason or "")
    assert "ORC-4" in (acks[3].reason or "") and acks[3].error_code == "101"
    assert "ORC-25" in (acks[4].reason or "")
    assert acks[5].control_id == "GOOD1"
    assert store.stored_keys() == ["hl7v2-mllp/VNCEL/GOOD1"]


@pytest.mark.anyio
async def test_an_oversized_message_is_answered_not_dropped(store: SqliteReportStore) -> None:
    server = MllpListener(MllpListenerSettings(port=0, max_message_bytes=2048), sink=store, providers={}.get)
    _, port = await server.start()
    try:
        (answer,) = await exchange(port, "MSH|^~\\&|" + "x" * 100_000)
        assert read_ack(answer).code == "AR"
    finally:
        await server.aclose()


@pytest.mark.anyio
async def test_a_repeated_control_id_is_acknowledged_and_applied_once(
    store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    message = orr("DUP1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")])
    first, second = await exchange(listener[1], message, message)
    assert read_ack(first).code == read_ack(second).code == "AA"
    assert "duplicate" in (read_ack(second).reason or "")
    assert store.applied() == [("A1B2C3-A99968-D0E87S", "item-1", "status", "accepted")]


@pytest.mark.anyio
async def test_status_about_another_providers_prescription_is_refused(
    store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "OTHER1"
    (answer,) = await exchange(listener[1], orr("X1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")]))
    ack = read_ack(answer)
    assert ack.code == "AE" and "not routed to VNCEL" in (ack.reason or "")
    assert store.applied() == []


@pytest.mark.anyio
async def test_a_connection_from_an_address_not_allowed_for_the_provider_is_refused(
    store: SqliteReportStore,
) -> None:
    providers = {
        "VNCEL": Hl7v2MllpSettings(host="h", port=1, inbound_allowed_addresses="10.0.0.0/8, 192.168.1.7")
    }
    server = MllpListener(MllpListenerSettings(port=0), sink=store, providers=providers.get)
    _, port = await server.start()
    try:
        store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
        good = orr("X1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")])
        answers = await exchange(port, good, good.replace("|VNCEL|", "|NOBODY|", 1))
        assert [read_ack(answer).code for answer in answers] == ["AR", "AR"]
        assert store.calls == 0
    finally:
        await server.aclose()


@pytest.mark.anyio
async def test_the_message_is_stored_before_it_is_acknowledged(
    store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    store.hold = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener[1])
    try:
        writer.write(frame(orr("HOLD1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")])))
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read_frame(reader), 0.3)  # no ACK while the store has not returned
        assert store.stored_keys() == []
        store.hold.set()
        received = await asyncio.wait_for(read_frame(reader), 10)
        assert received is not None and read_ack(received.payload).code == "AA"
        assert store.stored_keys() == ["hl7v2-mllp/VNCEL/HOLD1"]
    finally:
        writer.close()


@pytest.mark.anyio
async def test_a_gateway_that_cannot_store_answers_ar_and_the_resend_is_taken(
    store: SqliteReportStore, listener: tuple[MllpListener, int]
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    store.unavailable = True
    message = orr("R1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")])
    (refused,) = await exchange(listener[1], message)
    assert read_ack(refused).code == "AR"
    store.unavailable = False
    (taken,) = await exchange(listener[1], message)
    assert read_ack(taken).code == "AA" and len(store.applied()) == 1


# --- reading status messages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected_kind", "expected_status"),
    [
        ("accepted", ReportKind.STATUS, "accepted"),
        ("rejected", ReportKind.STATUS, "rejected"),
        ("query", ReportKind.STATUS, "query"),
        ("in-preparation", ReportKind.STATUS, "in-preparation"),
        ("delivery-scheduled", ReportKind.STATUS, "delivery-scheduled"),
        ("out-for-delivery", ReportKind.STATUS, "out-for-delivery"),
        ("delivered", ReportKind.STATUS, "delivered"),
        ("delivery-failed", ReportKind.STATUS, "delivery-failed"),
        ("cancelled", ReportKind.STATUS, "cancelled"),
        ("cancel-refused", ReportKind.CANCEL_REFUSED, None),
    ],
)
def test_each_status_the_simulator_sends_reads_back_as_itself(
    status: str, expected_kind: ReportKind, expected_status: str | None
) -> None:
    text = orr("C1", [event("A1B2C3-A99968-D0E87S", "item-1", status)])
    (report,) = read_status_message(text.encode(), default_zone=LONDON).reports
    assert (report.kind, report.status) == (expected_kind, expected_status)


def test_a_dispense_message_reads_as_dispensed_with_what_was_dispensed() -> None:
    text = orr("D1", [event("A1B2C3-A99968-D0E87S", "item-1", "dispensed")], message_type="RDS^O13")
    (report,) = read_status_message(text.encode(), default_zone=LONDON).reports
    assert report.status == "dispensed"
    assert (
        report.dispense is not None and report.dispense.batch == "BATCH-1" and report.dispense.quantity == "1"
    )


def test_reason_party_window_and_attempt_are_read() -> None:
    from adapters.inbound import DeliveryWindow
    from adapters.simulation.lifecycle import DELIVERY_FAILURES

    window = DeliveryWindow(datetime(2026, 11, 24, 8, tzinfo=UTC), datetime(2026, 11, 24, 12, tzinfo=UTC))
    failed = event(
        "A1B2C3-A99968-D0E87S", "item-1", "delivery-failed", reason=DELIVERY_FAILURES[0], attempt=2
    )
    scheduled = event("A1B2C3-A99968-D0E87S", "item-1", "delivery-scheduled", window=window, attempt=1)
    (first,) = read_status_message(orr("F1", [failed]).encode(), default_zone=LONDON).reports
    (second,) = read_status_message(orr("S1", [scheduled]).encode(), default_zone=LONDON).reports
    assert (first.reason_code, first.responsible_party, first.delivery_attempt) == (
        "patient-not-in",
        "patient",
        2,
    )
    assert second.delivery_window == window


def test_a_time_without_an_offset_is_read_in_the_listeners_zone() -> None:
    text = orr("T1", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")]).replace(
        "20261123090000+0000", "20260701090000"
    )
    (report,) = read_status_message(text.encode(), default_zone=LONDON).reports
    assert report.occurred_at == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


# --- the shared HL7 v2 samples ------------------------------------------------------------------------

HL7_FIXTURES = FIXTURES / "hl7v2"


def hl7_fixture(name: str) -> bytes:
    if not HL7_FIXTURES.is_dir():
        pytest.skip(f"HL7 v2 fixtures not present at {HL7_FIXTURES}")
    return (HL7_FIXTURES / name).read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "RDE_O11__v2.4__digoxin.hl7",
        "RDE_O11__v2.5.1__oseltamivir-outpatient.hl7",
        "RDE_O11__v2.8__nicardipine-infusion.hl7",
        "RDS_O13__v2.8__doxycycline-dispense.hl7",
        "ACK__v2.5.1__AR-rejected-unsupported-version.hl7",
        "ACK__v2.6.1__AA-accepted.hl7",
    ],
)
def test_every_sample_message_parses(name: str) -> None:
    parsed = parse(hl7_fixture(name))
    assert parsed.msh.name == "MSH" and parsed.control_id


def test_the_sample_acks_read_as_acks() -> None:
    accepted = read_ack(hl7_fixture("ACK__v2.6.1__AA-accepted.hl7"))
    rejected = read_ack(hl7_fixture("ACK__v2.5.1__AR-rejected-unsupported-version.hl7"))
    assert (accepted.code, accepted.control_id) == ("AA", "9B38584D")
    assert (rejected.code, rejected.error_code) == ("AR", "203")
    assert "Unsupported HL7 Version ID" in (rejected.reason or "")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("RDE_O11__v2.5.1__oseltamivir-outpatient.hl7", "an order is not a status message"),
        (
            "RDS_O13__v2.8__doxycycline-dispense.hl7",
            "ORC-4 (placer group number: the short-form prescription ID)",
        ),
    ],
)
def test_sample_messages_that_are_not_homecare_status_fail_with_a_clear_reason(
    name: str, reason: str
) -> None:
    with pytest.raises(Hl7Error) as caught:
        read_status_message(hl7_fixture(name), default_zone=LONDON)
    assert reason in caught.value.reason


def test_the_dispense_sample_reads_once_it_names_a_homecare_prescription() -> None:
    raw = hl7_fixture("RDS_O13__v2.8__doxycycline-dispense.hl7").replace(
        b"ORC|NW|1163422591^EPC||", b"ORC|NW|1163422591^EPC||A1B2C3-A99968-D0E87S|"
    )
    (report,) = read_status_message(raw, default_zone=LONDON).reports
    assert (report.short_form_id, report.item_identifier, report.status) == (
        "A1B2C3-A99968-D0E87S",
        "1163422591",
        "dispensed",
    )
    assert report.dispense is not None and report.dispense.quantity == "10"
    assert orjson.dumps(report.occurred_at.isoformat())


def test_the_order_fits_the_v2_5_rde_o11_structure_as_hl7apy_defines_it(
    builder: PrescriptionMessageBuilder,
) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from adapters.hl7v2_mllp.messages import Parties, build_order_message
    from adapters.order_content import read_order_content

    text = build_order_message(
        read_order_content(order_for(builder.build(items=3))),
        control_id="C1",
        parties=Parties("HOMECARE-GATEWAY", "HG", "PHARMACY", "VNCEL"),
        now=datetime.now(UTC),
    )
    message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    assert [child.name for child in message.children] == ["MSH", "RDE_O11_PATIENT", *["RDE_O11_ORDER"] * 3]
    order = message.children[2]
    names = [child.name for child in order.children]
    assert names[:3] == ["ORC", "RXE", "NTE"] and names[-1] == "RXR"
    assert [segment.name for segment in order.children[3].children] == ["TQ1"]


# --- TLS --------------------------------------------------------------------------------------------------


def issue_certificates(folder: Path) -> dict[str, Path]:
    """A private CA, a server certificate for 127.0.0.1 / localhost and a client certificate (CN VNCEL-MLLP)."""
    import ipaddress
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (folder / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Test CA"))
        .issuer_name(name("Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for stem, common_name, usage in (
        ("server", "localhost", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", "VNCEL-MLLP", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if stem == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        write(stem, key, builder.sign(ca_key, hashes.SHA256()))
    return {stem: folder / f"{stem}.{kind}" for stem in ("ca", "server", "client") for kind in ("pem",)} | {
        f"{stem}_key": folder / f"{stem}.key" for stem in ("server", "client")
    }


@pytest.mark.anyio
async def test_orders_go_over_tls_and_a_plain_client_cannot_talk_to_a_tls_provider(
    builder: PrescriptionMessageBuilder, tmp_path: Path
) -> None:
    files = issue_certificates(tmp_path)
    with MllpSimulatorServer(
        "VNCEL", lifecycle=False, tls_cert_file=files["server"], tls_key_file=files["server_key"]
    ) as provider:
        settings = settings_for(provider, tls=True, tls_ca_file=str(files["ca"]), ack_timeout_seconds=2)
        async with adapter_for("hl7v2-mllp", **settings) as adapter:
            assert (await adapter.send(order_for(builder.build()), idempotency_key="order-1")).is_delivered
        async with adapter_for(
            "hl7v2-mllp", **settings_for(provider, tls=True, ack_timeout_seconds=2)
        ) as untrusting:
            with pytest.raises(AdapterTransportError, match="SSL"):
                await untrusting.send(order_for(builder.build()), idempotency_key="order-2")
        assert len(provider.orders()) == 1


@pytest.mark.anyio
async def test_the_listener_can_require_a_client_certificate_naming_the_provider(
    store: SqliteReportStore, tmp_path: Path
) -> None:
    import ssl

    files = issue_certificates(tmp_path)
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    listener_settings = MllpListenerSettings(
        port=0,
        tls_cert_file=files["server"],
        tls_key_file=files["server_key"],
        tls_client_ca_file=files["ca"],
    )
    named = Hl7v2MllpSettings(
        host="h", port=1, inbound_allowed_addresses="127.0.0.1", inbound_tls_subject="VNCEL-MLLP"
    )
    other = Hl7v2MllpSettings(
        host="h", port=1, inbound_allowed_addresses="127.0.0.1", inbound_tls_subject="SOMEONE"
    )
    for provider_settings, expected in ((named, "AA"), (other, "AR")):
        server = MllpListener(listener_settings, sink=store, providers={"VNCEL": provider_settings}.get)
        _, port = await server.start()
        try:
            context = ssl.create_default_context(cafile=str(files["ca"]))
            context.load_cert_chain(str(files["client"]), str(files["client_key"]))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(frame(orr(f"TLS-{expected}", [event("A1B2C3-A99968-D0E87S", "item-1", "accepted")])))
            await writer.drain()
            received = await asyncio.wait_for(read_frame(reader), 10)
            writer.close()
            assert received is not None and read_ack(received.payload).code == expected
            no_certificate = ssl.create_default_context(cafile=str(files["ca"]))
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=no_certificate, server_hostname="localhost"
                )
                writer.write(frame("MSH|^~\\&|x"))
                await writer.drain()
                await asyncio.wait_for(reader.readexactly(1), 10)
        finally:
            await server.aclose()
    assert store.stored_keys() == ["hl7v2-mllp/VNCEL/TLS-AA"]
