"""`csv-drop` end to end: a trust over HTTP, the real gateway (API, dispatcher, status-folder poller) on
SQLite and PostgreSQL, and the folder provider simulator, on a local folder and behind its real SFTP
server, with real files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from adapters.csv_drop.formats import status_csv
from adapters.csv_drop.simulator import FolderSimulatorServer
from fhir_profiles.builder import Message, build_cancellation
from gateway.runner import Runtime
from gateway.settings import Settings
from gateway.store.db import Database
from tests.e2e_support import (
    HAPPY_PATH,
    applied_statuses,
    dispenses_of,
    history,
    item_identifiers_of,
    scalar,
    short_form_of,
)
from tests.runtime_support import running_gateway, use_adapter
from tests.test_lifecycle_e2e import FHIR, send_order, statuses, wait_until

POLL = {"poll_interval_seconds": 0.05}


@pytest.fixture
def gateway(db: Database, settings: Settings) -> Iterator[Runtime]:
    with running_gateway(db, settings) as runtime:
        yield runtime


@pytest.fixture
def provider(tmp_path: Path, gateway: Runtime, db: Database) -> Iterator[FolderSimulatorServer]:
    """The folder provider VNCEL on this machine, its folders registered as the gateway's."""
    with FolderSimulatorServer(tmp_path / "vncel", "VNCEL", seed=11, step_delay_seconds=0.02) as simulator:
        use_adapter(db, "VNCEL", "csv-drop", simulator.local_settings(**POLL))
        yield simulator


def files_in(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file()) if folder.is_dir() else []


def write_status_file(folder: Path, name: str, rows: list[dict[str, str]]) -> None:
    """As a provider does: under a dot name, then renamed."""
    (folder / f".{name}").write_bytes(status_csv(rows))
    (folder / f".{name}").rename(folder / name)


def row(message: Message, status: str, *, status_id: str, minute: int, **extra: str) -> dict[str, str]:
    return {
        "status_id": status_id,
        "short_form_id": short_form_of(message),
        "item_identifier": item_identifiers_of(message)[0],
        "status": status,
        "occurred_at": f"2026-11-23T09:{minute:02d}:00+00:00",
        **extra,
    }


def test_an_order_file_goes_out_and_the_status_files_bring_it_to_delivered(
    client: httpx.Client, db: Database, provider: FolderSimulatorServer
) -> None:
    message, items = send_order(client, items=2, seed=201)
    wait_until(lambda: statuses(client, items) == ["delivered", "delivered"])
    for item in items:
        assert applied_statuses(client, item) == ["received", "queued", "sent", *HAPPY_PATH]
    (order,) = provider.orders()
    assert order.short_form_id == short_form_of(message)
    status_dir = provider.provider.status_dir
    wait_until(lambda: files_in(status_dir / "done") == sorted(provider.status_files()))
    assert files_in(status_dir) == [] and files_in(status_dir / "error") == []
    (dispense,) = dispenses_of(client, items[0])
    assert dispense["quantity"]["value"] == 1
    rows_stored = scalar(db, "SELECT count(*) FROM provider_message WHERE scheme = 'csv-drop'")
    assert rows_stored == len(provider.events())


def test_over_sftp_orders_go_out_and_status_comes_back(
    client: httpx.Client, db: Database, gateway: Runtime, tmp_path: Path
) -> None:
    with FolderSimulatorServer(
        tmp_path / "sftp-provider", "VNCEL", sftp=True, seed=11, step_delay_seconds=0.02
    ) as provider:
        use_adapter(db, "VNCEL", "csv-drop", provider.sftp_settings(**POLL))
        _, items = send_order(client, items=1, seed=202)
        wait_until(lambda: statuses(client, items) == ["delivered"])
        assert len(provider.orders()) == 1
        wait_until(
            lambda: len(files_in(provider.provider.status_dir / "done")) == len(provider.status_files())
        )
    assert gateway.status_sources.polled_folders()[0].startswith("sftp://gateway@127.0.0.1:")


def test_an_order_the_provider_refuses_comes_back_rejected_with_its_reason(
    client: httpx.Client, provider: FolderSimulatorServer
) -> None:
    provider.configure(reject_rate=1.0)
    _, (item,) = send_order(client, items=1, seed=203)
    wait_until(lambda: statuses(client, [item]) == ["rejected"])
    task = client.get(f"/fhir/Task/{item}").json()
    assert task["statusReason"]["text"], "the reason from the status file"
    assert history(client, item)[-1][1] == "provider:VNCEL"


def test_an_unreachable_sftp_server_is_retried_until_it_is_back(
    client: httpx.Client, db: Database, gateway: Runtime, tmp_path: Path
) -> None:
    with FolderSimulatorServer(
        tmp_path / "sftp-provider", "VNCEL", sftp=True, seed=11, step_delay_seconds=0.02
    ) as provider:
        use_adapter(db, "VNCEL", "csv-drop", provider.sftp_settings(connect_timeout_seconds=2, **POLL))
        provider.stop_sftp()
        _, (item,) = send_order(client, items=1, seed=204)
        wait_until(lambda: scalar(db, "SELECT max(attempts) FROM outbox") >= 2)
        assert statuses(client, [item]) == ["queued"]
        provider.resume_sftp()
        wait_until(lambda: statuses(client, [item]) == ["delivered"])
        assert len(provider.orders()) == 1


def test_a_malformed_status_file_goes_to_error_with_a_sidecar_and_applies_nothing(
    client: httpx.Client, db: Database, provider: FolderSimulatorServer
) -> None:
    provider.configure(lifecycle=False)
    message, (item,) = send_order(client, items=1, seed=205)
    wait_until(lambda: statuses(client, [item]) == ["sent"])
    status_dir = provider.provider.status_dir
    good = row(message, "accepted", status_id="S-1", minute=1)
    broken = {key: value for key, value in row(message, "in-preparation", status_id="S-2", minute=2).items()}
    broken["occurred_at"] = "yesterday"
    write_status_file(status_dir, "mixed.csv", [good, broken])
    wait_until(lambda: "mixed.csv.error.json" in files_in(status_dir / "error"))
    sidecar = json.loads((status_dir / "error" / "mixed.csv.error.json").read_text())
    assert sidecar["rows_applied"] == [] and sidecar["problems"][0]["column"] == "occurred_at"
    assert statuses(client, [item]) == ["sent"]
    assert scalar(db, "SELECT count(*) FROM provider_message") == 0


def test_a_status_row_seen_before_is_taken_and_applied_once(
    client: httpx.Client, db: Database, provider: FolderSimulatorServer
) -> None:
    provider.configure(duplicate_status_next=100)
    _, (item,) = send_order(client, items=1, seed=206)
    wait_until(lambda: statuses(client, [item]) == ["delivered"])
    status_dir = provider.provider.status_dir
    wait_until(lambda: len(files_in(status_dir / "done")) == len(provider.status_files()))
    assert len(provider.status_files()) == 2 * len(provider.events()), "every status file written twice"
    provider_steps = [status for status, source, _ in history(client, item) if source == "provider:VNCEL"]
    assert provider_steps == HAPPY_PATH, "each row applied once"
    assert files_in(status_dir / "error") == []
    assert scalar(db, "SELECT count(*) FROM provider_message") == len(provider.events())


def test_a_row_about_another_providers_prescription_is_refused_and_named_in_the_sidecar(
    client: httpx.Client, db: Database, provider: FolderSimulatorServer
) -> None:
    message, (item,) = send_order(client, items=1, seed=207, performer_ods="VNFKT")
    status_dir = provider.provider.status_dir
    write_status_file(status_dir, "theirs.csv", [row(message, "accepted", status_id="T-1", minute=1)])
    wait_until(lambda: "theirs.csv.error.json" in files_in(status_dir / "error"))
    sidecar = json.loads((status_dir / "error" / "theirs.csv.error.json").read_text())
    assert "not routed to VNCEL" in sidecar["problems"][0]["problem"]
    assert statuses(client, [item]) == ["queued"]
    assert scalar(db, "SELECT count(*) FROM provider_message") == 0


def test_a_cancellation_file_is_answered_by_a_status_row(
    client: httpx.Client, db: Database, provider: FolderSimulatorServer
) -> None:
    provider.configure(step_delay_seconds=30)
    message, (item,) = send_order(client, items=1, seed=208)
    wait_until(lambda: statuses(client, [item]) == ["sent"])
    response = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert response.status_code in (200, 202), response.text
    wait_until(lambda: statuses(client, [item]) == ["cancelled"])
    steps = [(status, source) for status, source, _ in history(client, item)]
    assert steps[-2:] == [("cancel-requested", "trust:RBA"), ("cancelled", "provider:VNCEL")]


def test_a_refused_cancellation_puts_the_item_back_where_it_was(
    client: httpx.Client, db: Database, provider: FolderSimulatorServer
) -> None:
    provider.configure(lifecycle=False)
    message, (item,) = send_order(client, items=1, seed=209)
    wait_until(lambda: statuses(client, [item]) == ["sent"])
    status_dir = provider.provider.status_dir
    write_status_file(status_dir, "accept.csv", [row(message, "accepted", status_id="A-1", minute=1)])
    wait_until(lambda: statuses(client, [item]) == ["accepted"])
    provider.configure(down=True)  # the cancellation file waits in the order folder: we answer it here
    response = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert response.status_code == 202, response.text
    wait_until(lambda: statuses(client, [item]) == ["cancel-requested"])
    refusal: dict[str, Any] = row(
        message, "cancel-refused", status_id="A-2", minute=59, reason_text="Already packed"
    )
    write_status_file(status_dir, "refuse.csv", [refusal])
    wait_until(lambda: statuses(client, [item]) == ["accepted"])
    assert client.get(f"/fhir/Task/{item}").json()["statusReason"]["text"] == "Already packed"
    assert history(client, item)[-1][:2] == ("accepted", "provider:VNCEL")


def test_one_poller_reads_a_folder_and_a_changed_folder_gets_a_new_one(
    db: Database, gateway: Runtime, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second"
    for folder in (first, second):
        (folder / "status").mkdir(parents=True)
        (folder / "orders").mkdir()
    settings = {"order_dir": str(first / "orders"), "status_dir": str(first / "status"), **POLL}
    use_adapter(db, "VNCEL", "csv-drop", settings)
    use_adapter(db, "VNFKT", "csv-drop", settings)
    wait_until(lambda: gateway.status_sources.polled_folders() == [f"file://{first / 'status'}"])
    use_adapter(db, "VNFKT", "csv-drop", {**settings, "status_dir": str(second / "status")})
    wait_until(
        lambda: (
            gateway.status_sources.polled_folders()
            == sorted([f"file://{first / 'status'}", f"file://{second / 'status'}"])
        )
    )
