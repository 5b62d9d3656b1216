"""Status into the gateway through the adapters: HL7 v2 status messages over MLLP, or rows of a status file.

    python bench/status_in.py [--via mllp|csv-drop] [--messages 1000] [--database-url URL]

Accepts `--messages` one-item prescriptions for a provider (SQLite in a temporary folder by default),
then starts `homecare-gateway worker` (the MLLP listener, or the status-folder poller) and reports
`accepted` for each: over MLLP one ORR^O02 at a time on one connection, waiting for each ACK (what a
provider's interface engine does); as csv-drop one status file with a row per prescription. Every
message goes through the gateway's report sink: stored with its key, applied through the status
authority, audited, committed, then acknowledged. Prints messages/s, p50/p99 ACK round trip (MLLP) and
the worker's CPU per message. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from sqlalchemy import text

from adapters.csv_drop.formats import status_csv
from adapters.hl7v2_mllp.framing import END_BLOCK, frame
from adapters.hl7v2_mllp.simulator import status_message
from adapters.simulation.order_book import LifecycleEvent
from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.clock import system_clock
from gateway.domain.context import Context
from gateway.domain.intake import receive_message_blocking
from gateway.store.db import Database
from gateway.store.providers import add_provider

ODS = "VNCEL"


def accept(db: Database, count: int) -> list[tuple[str, str]]:
    """(short-form ID, item identifier) of `count` accepted one-item prescriptions."""
    builder = PrescriptionMessageBuilder(seed=9, performer_ods=ODS)
    context = Context.for_database(db)
    caller = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))
    accepted = []
    for _ in range(count):
        message = builder.build(items=1)
        body = orjson.dumps(message)
        receive_message_blocking(
            context, body=body, document=orjson.loads(body), caller=caller, request_id=str(uuid.uuid4())
        )
        request = message["entry"][1]["resource"]
        accepted.append((request["groupIdentifier"]["value"], request["identifier"][0]["value"]))
    context.close()
    return accepted


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(database_url: str, data_dir: str, **environment: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOMECARE_DATA_DIR": data_dir,
        "HOMECARE_LOG_LEVEL": "WARNING",
        "HOMECARE_STATUS_SOURCES_REFRESH_SECONDS": "0.2",
        "HOMECARE_ADMIN_LISTEN": "off",
        **environment,
    }
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker"], env=env)


def applied(db: Database) -> int:
    with db.read() as session:
        return int(
            session.execute(
                text("SELECT count(*) FROM prescription_item WHERE status = 'accepted'")
            ).scalar_one()
        )


def via_mllp(port: int, work: list[tuple[str, str]]) -> tuple[float, list[float]]:
    latencies = []
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    messages = [
        status_message(
            ODS,
            "ORR^O02",
            uuid.uuid4().hex[:20].upper(),
            [LifecycleEvent(1, "k", short_form, item, "accepted", datetime.now(UTC))],
        )
        for short_form, item in work
    ]
    started = time.perf_counter()
    with connection:
        for message in messages:
            sent = time.perf_counter()
            connection.sendall(frame(message))
            received = b""
            while not received.endswith(END_BLOCK):
                received += connection.recv(65536)
            assert b"MSA|AA" in received, received[:300]
            latencies.append(time.perf_counter() - sent)
    return time.perf_counter() - started, latencies


def via_files(db: Database, folder: Path, work: list[tuple[str, str]]) -> float:
    rows = [
        {
            "status_id": f"S-{number}",
            "short_form_id": short_form,
            "item_identifier": item,
            "status": "accepted",
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        for number, (short_form, item) in enumerate(work)
    ]
    (folder / ".status.csv").write_bytes(status_csv(rows))
    started = time.perf_counter()
    (folder / ".status.csv").rename(folder / "status.csv")
    while applied(db) < len(work):
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", choices=["mllp", "csv-drop"], default="mllp")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = options.database_url or f"sqlite:///{folder}/bench.db"
        db = Database(url, pool_size=2)
        db.migrate()
        status_dir = Path(folder) / "status"
        status_dir.mkdir()
        settings: dict[str, object] = (
            {"host": "127.0.0.1", "port": 1, "inbound_allowed_addresses": "127.0.0.1"}
            if options.via == "mllp"
            else {
                "order_dir": f"{folder}/orders",
                "status_dir": str(status_dir),
                "poll_interval_seconds": 0.1,
            }
        )
        with db.write() as session:
            add_provider(
                session,
                ods_code=ODS,
                name="Bench",
                adapter="hl7v2-mllp" if options.via == "mllp" else "csv-drop",
                settings=settings,
                now=system_clock(),
            )
        work = accept(db, options.messages)
        with db.write() as session:
            # The orders are not sent anywhere: the worker's dispatcher stays idle and out of the figures.
            session.execute(text("DELETE FROM outbox"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        process = worker(
            url, folder, HOMECARE_MLLP_LISTEN=f"127.0.0.1:{port}", HOMECARE_RUN_DISPATCHER="true"
        )
        try:
            time.sleep(3)  # started and idle: its start-up is not counted
            cpu_before = cpu_seconds(process.pid)
            if options.via == "mllp":
                elapsed, latencies = via_mllp(port, work)
            else:
                elapsed, latencies = via_files(db, status_dir, work), []
            cpu = cpu_seconds(process.pid) - cpu_before
        finally:
            process.terminate()
            process.wait(timeout=30)
        assert applied(db) == len(work)
        db.dispose()
    print(
        f"status via {options.via}: {len(work)} messages in {elapsed:.2f} s = {len(work) / elapsed:.0f} messages/s"
    )
    if latencies:
        ordered = sorted(latencies)
        print(
            f"ACK round trip p50 {statistics.median(ordered) * 1000:.1f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99) - 1] * 1000:.1f} ms"
        )
    print(f"worker CPU {cpu / len(work) * 1000:.2f} ms per message")


if __name__ == "__main__":
    main()
