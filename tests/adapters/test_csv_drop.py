"""The `csv-drop` adapter, its status poller and its simulator, over real files and a real SFTP server."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from adapters.base import AdapterTransportError
from adapters.csv_drop.formats import ORDER_COLUMNS, ORDER_FORMAT, STATUS_FORMAT, status_csv
from adapters.csv_drop.poller import StatusFolderPoller
from adapters.csv_drop.settings import CsvDropSettings
from adapters.csv_drop.simulator import FolderSimulatorServer
from adapters.registry import validate_settings
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from tests.adapters.report_store import SqliteReportStore
from tests.adapters.support import adapter_for, eventually, item_ids_of, order_for, short_form_of

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
def folders(tmp_path: Path) -> dict[str, str]:
    orders, status = tmp_path / "out" / "orders", tmp_path / "out" / "status"
    orders.mkdir(parents=True)
    status.mkdir(parents=True)
    return {"order_dir": str(orders), "status_dir": str(status)}


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[FolderSimulatorServer]:
    with FolderSimulatorServer(tmp_path / "provider", "VNCEL", seed=1, step_delay_seconds=0.01) as server:
        yield server


def poller_for(settings: dict[str, object], store: SqliteReportStore) -> StatusFolderPoller:
    return StatusFolderPoller(CsvDropSettings.model_validate(settings), provider_ods="VNCEL", sink=store)


async def poll_until(
    poller: StatusFolderPoller, condition: Callable[[], bool], *, timeout: float = 30
) -> None:
    """Poll the status folder (as the gateway would, often) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("gave up polling")
        await poller.poll_once()
        await asyncio.sleep(0.02)


def write_status(folder: str, name: str, rows: list[dict[str, str]]) -> None:
    (Path(folder) / name).write_bytes(status_csv(rows))


def row(status_id: str, status: str = "accepted", **extra: str) -> dict[str, str]:
    return {
        "status_id": status_id,
        "short_form_id": "A1B2C3-A99968-D0E87S",
        "item_identifier": "item-1",
        "status": status,
        "occurred_at": "2026-11-23T09:00:00Z",
        **extra,
    }


# --- order files -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_order_file_has_a_versioned_header_and_one_row_per_line_item(
    builder: PrescriptionMessageBuilder, folders: dict[str, str]
) -> None:
    message = builder.build(items=2)
    async with adapter_for("csv-drop", **folders) as adapter:
        result = await adapter.send(order_for(message), idempotency_key="order-1")
    assert result.is_delivered and result.answer_follows
    assert sorted(p.name for p in Path(folders["order_dir"]).iterdir()) == ["order-1.csv"]
    rows = list(csv.DictReader(io.StringIO((Path(folders["order_dir"]) / "order-1.csv").read_text())))
    assert list(rows[0]) == list(ORDER_COLUMNS)
    assert [r["item_identifier"] for r in rows] == item_ids_of(message)
    assert {r["format_version"] for r in rows} == {ORDER_FORMAT}
    assert {r["order_key"] for r in rows} == {"order-1"}
    assert {r["short_form_id"] for r in rows} == {short_form_of(message)}
    assert rows[0]["message_type"] == "new" and rows[0]["period_unit"] == "wk"
    assert rows[0]["dosage_text"] == "Inject one dose every two weeks"


@pytest.mark.anyio
async def test_a_resend_neither_overwrites_nor_duplicates_and_leaves_no_temporary_file(
    builder: PrescriptionMessageBuilder, folders: dict[str, str]
) -> None:
    message = builder.build()
    async with adapter_for("csv-drop", **folders) as adapter:
        await adapter.send(order_for(message), idempotency_key="order-1")
        written = (Path(folders["order_dir"]) / "order-1.csv").read_bytes()
        again = await adapter.send(order_for(message), idempotency_key="order-1")
    assert again.is_delivered and "already there" in again.detail
    assert [p.name for p in Path(folders["order_dir"]).iterdir()] == ["order-1.csv"]
    assert (Path(folders["order_dir"]) / "order-1.csv").read_bytes() == written


@pytest.mark.anyio
async def test_the_fhir_json_format_writes_the_trusts_bundle_as_received(
    builder: PrescriptionMessageBuilder, folders: dict[str, str]
) -> None:
    body = orjson.dumps(builder.build(), option=orjson.OPT_INDENT_2)
    async with adapter_for("csv-drop", order_format="fhir-json", **folders) as adapter:
        await adapter.send(order_for(builder.build(), body=body), idempotency_key="order-1")
    assert (Path(folders["order_dir"]) / "order-1.json").read_bytes() == body


@pytest.mark.anyio
async def test_an_unwritable_order_folder_is_retried_and_written_once_it_is_back(
    builder: PrescriptionMessageBuilder, tmp_path: Path
) -> None:
    orders = tmp_path / "mount" / "orders"
    async with adapter_for("csv-drop", order_dir=str(orders), status_dir=str(tmp_path / "status")) as adapter:
        with pytest.raises(AdapterTransportError, match="order file not written"):
            await adapter.send(order_for(builder.build()), idempotency_key="order-1")
        orders.mkdir(parents=True)
        assert (await adapter.send(order_for(builder.build()), idempotency_key="order-1")).is_delivered
    assert [p.name for p in orders.iterdir()] == ["order-1.csv"]


# --- the whole exchange with the folder provider -------------------------------------------------------


@pytest.mark.anyio
async def test_orders_go_out_and_the_lifecycle_comes_back_in_status_files(
    builder: PrescriptionMessageBuilder, provider: FolderSimulatorServer, store: SqliteReportStore
) -> None:
    message = builder.build(items=2)
    store.routes[short_form_of(message)] = "VNCEL"
    settings = provider.local_settings(poll_interval_seconds=0.05)
    poller = poller_for(settings, store)
    async with adapter_for("csv-drop", **settings) as adapter:
        assert (await adapter.send(order_for(message), idempotency_key="order-1")).is_delivered
    await poll_until(
        poller, lambda: all(store.statuses(i)[-1:] == ["delivered"] for i in item_ids_of(message))
    )
    for item in item_ids_of(message):
        assert store.statuses(item) == HAPPY_PATH
    status_dir = Path(settings["status_dir"])
    assert not [p for p in status_dir.iterdir() if p.is_file()]
    assert len(list((status_dir / "done").iterdir())) == len(provider.status_files())
    assert provider.receipt_counts() == {"order-1": 1}


@pytest.mark.anyio
async def test_a_provider_refusal_comes_back_as_rejected_rows_with_the_reason(
    builder: PrescriptionMessageBuilder, tmp_path: Path, store: SqliteReportStore
) -> None:
    message = builder.build(items=2)
    store.routes[short_form_of(message)] = "VNCEL"
    with FolderSimulatorServer(tmp_path / "p", "VNCEL", reject_rate=1.0) as provider:
        settings = provider.local_settings()
        async with adapter_for("csv-drop", **settings) as adapter:
            await adapter.send(order_for(message), idempotency_key="order-1")
        poller = poller_for(settings, store)
        await poll_until(poller, lambda: len(store.applied()) == 2)
    assert {status for _, _, _, status in store.applied()} == {"rejected"}
    assert all(report["reason_code"] for report in store.reports())


@pytest.mark.anyio
async def test_a_cancellation_file_is_answered_in_a_status_file(
    builder: PrescriptionMessageBuilder, tmp_path: Path, store: SqliteReportStore
) -> None:
    message = builder.build(items=1)
    store.routes[short_form_of(message)] = "VNCEL"
    with FolderSimulatorServer(tmp_path / "p", "VNCEL", lifecycle=False) as provider:
        settings = provider.local_settings()
        async with adapter_for("csv-drop", **settings) as adapter:
            await adapter.send(order_for(message), idempotency_key="order-1")
            await eventually(lambda: provider.order(short_form_of(message)), what="order picked up")
            cancel = order_for(build_cancellation(message), kind="cancel")
            assert (await adapter.send(cancel, idempotency_key="cancel-1")).answer_follows
        poller = poller_for(settings, store)
        await poll_until(poller, lambda: bool(store.applied()))
    assert store.applied() == [(short_form_of(message), item_ids_of(message)[0], "status", "cancelled")]


# --- status files ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_malformed_status_file_goes_to_error_with_a_sidecar_saying_what_is_wrong(
    folders: dict[str, str], store: SqliteReportStore
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    status = Path(folders["status_dir"])
    (status / "a-no-column.csv").write_bytes(status_csv([row("s1")]).replace(b",occurred_at,", b",when,", 1))
    write_status(
        folders["status_dir"], "b-bad-cells.csv", [row("s2", "teleported"), row("s3", occurred_at="noon")]
    )
    (status / "c-not-text.csv").write_bytes(b"\xff\xfe\x00garbage")
    summary = await poller_for(folders, store).poll_once()
    assert summary.error == ["a-no-column.csv", "b-bad-cells.csv", "c-not-text.csv"]
    assert store.applied() == []
    first = orjson.loads((status / "error" / "a-no-column.csv.error.json").read_bytes())
    assert {"row": 0, "column": "occurred_at", "problem": "required column is missing"} in first["problems"]
    second = orjson.loads((status / "error" / "b-bad-cells.csv.error.json").read_bytes())
    assert [problem["row"] for problem in second["problems"]] == [1, 2]
    assert "'teleported' is not a status a provider reports" in second["problems"][0]["problem"]
    assert second["problems"][1]["column"] == "occurred_at"
    assert second["format"] == STATUS_FORMAT and second["rows_applied"] == []
    assert (status / "error" / "c-not-text.csv").exists()


@pytest.mark.anyio
async def test_a_status_row_seen_before_is_acknowledged_and_applied_once(
    folders: dict[str, str], store: SqliteReportStore
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    write_status(folders["status_dir"], "1.csv", [row("s1")])
    write_status(folders["status_dir"], "2.csv", [row("s1"), row("s2", "in-preparation")])
    summary = await poller_for(folders, store).poll_once()
    assert summary.done == ["1.csv", "2.csv"]
    assert store.statuses("item-1") == ["accepted", "in-preparation"]


@pytest.mark.anyio
async def test_a_row_about_another_providers_prescription_is_refused_and_named_in_the_sidecar(
    folders: dict[str, str], store: SqliteReportStore
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    store.routes["FFFFFF-A99968-0000A5"] = "OTHER1"
    other = row("s2", short_form_id="FFFFFF-A99968-0000A5")
    write_status(folders["status_dir"], "mixed.csv", [row("s1"), other])
    summary = await poller_for(folders, store).poll_once()
    assert summary.error == ["mixed.csv"]
    sidecar = orjson.loads((Path(folders["status_dir"]) / "error" / "mixed.csv.error.json").read_bytes())
    assert sidecar["rows_applied"] == [1]
    assert sidecar["problems"] == [{"row": 2, "column": None, "problem": sidecar["problems"][0]["problem"]}]
    assert "not routed to VNCEL" in sidecar["problems"][0]["problem"]
    assert store.applied() == [("A1B2C3-A99968-D0E87S", "item-1", "status", "accepted")]


@pytest.mark.anyio
async def test_a_file_waits_while_the_gateway_cannot_store_and_is_taken_later(
    folders: dict[str, str], store: SqliteReportStore
) -> None:
    store.routes["A1B2C3-A99968-D0E87S"] = "VNCEL"
    write_status(folders["status_dir"], "1.csv", [row("s1")])
    poller = poller_for(folders, store)
    store.unavailable = True
    assert (await poller.poll_once()).waiting == ["1.csv"]
    assert (Path(folders["status_dir"]) / "1.csv").exists()
    store.unavailable = False
    assert (await poller.poll_once()).done == ["1.csv"]
    assert len(store.applied()) == 1


@pytest.mark.anyio
async def test_the_simulators_duplicate_and_malformed_status_files_are_handled(
    builder: PrescriptionMessageBuilder, tmp_path: Path, store: SqliteReportStore
) -> None:
    message = builder.build(items=1)
    store.routes[short_form_of(message)] = "VNCEL"
    with FolderSimulatorServer(
        tmp_path / "p", "VNCEL", step_delay_seconds=0.01, duplicate_status_next=1, malformed_status_next=1
    ) as provider:
        settings = provider.local_settings()
        async with adapter_for("csv-drop", **settings) as adapter:
            await adapter.send(order_for(message), idempotency_key="order-1")
        poller = poller_for(settings, store)
        item = item_ids_of(message)[0]
        await poll_until(poller, lambda: store.statuses(item)[-1:] == ["delivered"])
    # The first status file is written broken, twice: both copies are refused (the provider would
    # resend `accepted`); the rest is applied once each.
    assert store.statuses(item) == HAPPY_PATH[1:]
    errors = list((Path(settings["status_dir"]) / "error").glob("*.error.json"))
    assert len(errors) == 2


# --- over SFTP ----------------------------------------------------------------------------------------------


@pytest.fixture
def sftp_provider(tmp_path: Path) -> Iterator[FolderSimulatorServer]:
    with FolderSimulatorServer(
        tmp_path / "provider", "VNCEL", sftp=True, seed=1, step_delay_seconds=0.01
    ) as server:
        yield server


@pytest.mark.anyio
@pytest.mark.parametrize("pin", ["fingerprint", "known_hosts"])
async def test_over_sftp_orders_go_out_and_status_comes_back(
    builder: PrescriptionMessageBuilder,
    sftp_provider: FolderSimulatorServer,
    store: SqliteReportStore,
    pin: str,
) -> None:
    message = builder.build(items=2)
    store.routes[short_form_of(message)] = "VNCEL"
    settings = sftp_provider.sftp_settings(pin=pin)
    async with adapter_for("csv-drop", **settings) as adapter:
        assert (await adapter.check()).ok
        assert (await adapter.send(order_for(message), idempotency_key="order-1")).is_delivered
    poller = poller_for(settings, store)
    try:
        await poll_until(
            poller, lambda: all(store.statuses(i)[-1:] == ["delivered"] for i in item_ids_of(message))
        )
    finally:
        await poller.aclose()
    for item in item_ids_of(message):
        assert store.statuses(item) == HAPPY_PATH
    assert (sftp_provider.root / "status" / "done").is_dir()
    assert sftp_provider.receipt_counts() == {"order-1": 1}


@pytest.mark.anyio
async def test_over_sftp_a_server_with_another_host_key_is_refused(
    builder: PrescriptionMessageBuilder, sftp_provider: FolderSimulatorServer
) -> None:
    settings = {**sftp_provider.sftp_settings(), "sftp_host_key_fingerprint": "SHA256:" + "A" * 43}
    async with adapter_for("csv-drop", **settings) as adapter:
        health = await adapter.check()
        assert not health.ok and "Host key is not trusted" in health.detail
        with pytest.raises(AdapterTransportError):
            await adapter.send(order_for(builder.build()), idempotency_key="order-1")
    assert not list((sftp_provider.root / "orders").glob("*.csv"))


@pytest.mark.anyio
async def test_over_sftp_an_unreachable_server_is_retried_and_reached_when_back(
    builder: PrescriptionMessageBuilder, sftp_provider: FolderSimulatorServer
) -> None:
    settings = sftp_provider.sftp_settings(connect_timeout_seconds=5)
    message = builder.build()
    async with adapter_for("csv-drop", **settings) as adapter:
        assert (await adapter.send(order_for(message), idempotency_key="order-1")).is_delivered
        sftp_provider.stop_sftp()
        with pytest.raises(AdapterTransportError):
            await adapter.send(order_for(builder.build()), idempotency_key="order-2")
        sftp_provider.resume_sftp()
        assert (await adapter.send(order_for(builder.build()), idempotency_key="order-2")).is_delivered
    await eventually(lambda: len(sftp_provider.orders()) == 2, what="both orders picked up")


def test_sftp_settings_must_pin_the_host_key_and_use_a_key(tmp_path: Path) -> None:
    from adapters.registry import InvalidAdapterSettings

    key = tmp_path / "key"
    key.write_text("not checked here")
    base = {
        "transport": "sftp",
        "order_dir": "/o",
        "status_dir": "/s",
        "sftp_host": "h",
        "sftp_username": "u",
    }
    with pytest.raises(InvalidAdapterSettings, match="sftp_private_key_file"):
        validate_settings("csv-drop", base)
    with pytest.raises(InvalidAdapterSettings, match="pin the server's host key"):
        validate_settings("csv-drop", {**base, "sftp_private_key_file": str(key)})
    with pytest.raises(InvalidAdapterSettings, match="SHA256"):
        validate_settings(
            "csv-drop", {**base, "sftp_private_key_file": str(key), "sftp_host_key_fingerprint": "md5"}
        )
    with pytest.raises(InvalidAdapterSettings, match="absolute"):
        validate_settings("csv-drop", {"order_dir": "orders", "status_dir": "/s"})
