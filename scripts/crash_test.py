"""Crash test of delivery: kill -9 gateway processes mid-send, again and again, and count.

    python scripts/crash_test.py [--adapter fhir-rest] [--kills 100] [--prescriptions 200] [--database-url URL]

Accepts prescriptions into a fresh database (SQLite by default), starts the adapter's provider
simulator, then repeatedly starts a gateway process and kills it with SIGKILL while its work is in
flight; a last process finishes. It prints how many kills there were, how many prescriptions, how many
never reached the provider (must be 0), how many the provider took more than once (must be 0), how
many did not end where they should at the gateway (must be 0) and how many provider reports were
applied twice (must be 0). The test suite runs the same function with fewer kills.

- `fhir-rest`: `homecare-gateway worker` processes send to a slow provider; every order must be `sent`.
- `hl7v2-mllp`: workers send RDE^O11 to a provider slow to ACK and run the MLLP listener its status
  messages come back to; every order must reach `delivered`, each status applied once.
- `csv-drop`: workers write order files over SFTP and read the provider's status folder; every order
  must reach `delivered`, each status row applied once.
- `pull`: `homecare-gateway serve` processes (API and dispatcher) are killed while the polling
  provider holds leases and acknowledges; every order must reach `delivered`, pulled once.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import bindparam, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.csv_drop.simulator import FolderSimulatorServer
from adapters.fhir_rest.simulator import SimulatorServer
from adapters.hl7v2_mllp.simulator import MllpSimulatorServer
from adapters.pull.simulator import PullSimulator, PullSimulatorConfig
from auth.assertion import generate_client_key, private_key
from auth.clients import KeySource, add_client, get_client
from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.clock import system_clock
from gateway.domain.context import Context
from gateway.domain.intake import receive_message_blocking
from gateway.store.db import Database
from gateway.store.outbox import stats
from gateway.store.providers import add_provider, list_providers, update_provider
from gateway.store.types import UTCDateTime

ADAPTERS = ("fhir-rest", "hl7v2-mllp", "csv-drop", "pull")
# The lifecycle of the simulators with status (no failed deliveries: each status happens once).
_LIFECYCLE: dict[str, Any] = {"step_delay_seconds": 0.05, "delivery_failure_rate": 0.0}


@dataclass(frozen=True)
class CrashReport:
    kills: int
    kills_mid_send: int
    prescriptions: int
    reached_provider: int
    lost: int
    accepted_more_than_once: int
    requests_received: int
    not_sent_at_gateway: int
    applied_twice: int = 0
    adapter: str = "fhir-rest"

    def lines(self) -> list[str]:
        return [
            f"adapter: {self.adapter}",
            f"kills: {self.kills} ({self.kills_mid_send} while work was in flight)",
            f"prescriptions: {self.prescriptions}",
            f"reached the provider: {self.reached_provider}",
            f"lost: {self.lost}",
            f"taken by the provider more than once: {self.accepted_more_than_once}",
            f"messages the provider received: {self.requests_received} (repeats are the at-least-once part)",
            f"not where they should be at the gateway: {self.not_sent_at_gateway}",
            f"provider reports applied twice: {self.applied_twice}",
        ]


@dataclass
class Rig:
    """One adapter's provider and how the gateway processes run against it."""

    scheme: str
    settings: dict[str, Any]
    final_status: str
    provider_orders: Callable[[], list[str]]
    """The short-form IDs of the orders the provider took (one entry per order it took)."""
    received: Callable[[], int]
    command: list[str] = field(default_factory=lambda: ["worker"])
    environment: dict[str, str] = field(default_factory=dict)
    kill_delay: float = 0.8
    in_flight: str = "SELECT 1 FROM outbox WHERE state = 'sending' AND lease_owner LIKE :owner LIMIT 1"


def _accept(db: Database, count: int, seed: int) -> list[str]:
    """Prescriptions accepted as a trust sends them; their short-form IDs."""
    builder = PrescriptionMessageBuilder(seed=seed)
    context = Context.for_database(db)
    caller = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))
    short_forms = []
    for _ in range(count):
        message = builder.build(items=1)
        body = orjson.dumps(message)
        receive_message_blocking(
            context, body=body, document=orjson.loads(body), caller=caller, request_id=str(uuid.uuid4())
        )
        short_forms.append(str(message["entry"][1]["resource"]["groupIdentifier"]["value"]))
    context.close()
    return short_forms


def _in_flight(db: Database, rig: Rig, pid: int, since: datetime) -> bool:
    """Whether the process `pid` (started at `since`) has work in flight."""
    query = text(rig.in_flight)
    parameters: dict[str, Any] = {}
    if ":owner" in rig.in_flight:
        parameters["owner"] = f"%:{pid}:%"
    if ":since" in rig.in_flight:
        query = query.bindparams(bindparam("since", type_=UTCDateTime))
        parameters["since"] = since
    with db.read() as session:
        found = session.execute(query, parameters).first()
    return found is not None


def _process(database_url: str, data_dir: str, rig: Rig) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOMECARE_DATA_DIR": data_dir,
        "HOMECARE_DISPATCH_LEASE_SECONDS": "1",
        "HOMECARE_DISPATCH_POLL_SECONDS": "0.05",
        "HOMECARE_DISPATCH_MAX_IN_FLIGHT": "8",
        "HOMECARE_RETRY_BASE_SECONDS": "0.05",
        "HOMECARE_RETRY_CAP_SECONDS": "0.5",
        "HOMECARE_RETRY_MAX_ATTEMPTS": "1000",
        "HOMECARE_STATUS_SOURCES_REFRESH_SECONDS": "0.2",
        "HOMECARE_LOG_LEVEL": "WARNING",
        "HOMECARE_ADMIN_LISTEN": "off",  # several processes on one machine: no /metrics needed
        **rig.environment,
    }
    log = (Path(data_dir) / "gateway.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *rig.command], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _register(db: Database, rig: Rig) -> None:
    with db.write() as session:
        if any(provider.ods_code == "VNCEL" for provider in list_providers(session)):
            update_provider(
                session, "VNCEL", now=system_clock(), adapter=rig.scheme, settings=rig.settings, enabled=True
            )
        else:
            add_provider(
                session,
                ods_code="VNCEL",
                name="Crash test provider",
                adapter=rig.scheme,
                settings=rig.settings,
                now=system_clock(),
            )


def _kill_repeatedly(db: Database, database_url: str, data_dir: str, rig: Rig, kills: int, seed: int) -> int:
    """Start a gateway process and kill it at a random moment once its work is in flight; how many kills
    landed while it was."""
    rng = random.Random(seed)
    mid_send = 0
    for _ in range(kills):
        started = system_clock()
        process = _process(database_url, data_dir, rig)
        deadline = time.monotonic() + 15
        while (
            not _in_flight(db, rig, process.pid, started)
            and time.monotonic() < deadline
            and process.poll() is None
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, rig.kill_delay))
        in_flight = _in_flight(db, rig, process.pid, started)
        if process.poll() is not None:
            output = (Path(data_dir) / "gateway.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"a gateway process exited by itself ({process.returncode}): {output}")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        mid_send += 1 if in_flight else 0
    return mid_send


def _finish(db: Database, database_url: str, data_dir: str, rig: Rig, count: int, timeout: float) -> None:
    """A last process, until every prescription is where it should be (or the time is up)."""
    process = _process(database_url, data_dir, rig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stats(db, now=system_clock()).depth == 0 and _finished(db, rig) == count:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def _finished(db: Database, rig: Rig) -> int:
    with db.read() as session:
        return int(
            session.execute(
                text("SELECT count(*) FROM prescription WHERE status = :final"), {"final": rig.final_status}
            ).scalar_one()
        )


def _applied_twice(db: Database, rig: Rig) -> int:
    """Provider reports (item and status) recorded more than once: with any verdict for adapters whose
    messages are de-duplicated by key, applied more than once for Task updates (which are not)."""
    verdict = "verdict = 'applied'" if rig.scheme == "pull" else "verdict IS NOT NULL"
    with db.read() as session:
        return len(
            session.execute(
                text(
                    f"SELECT item_id, status FROM status_event WHERE source LIKE 'provider:%' "
                    f"AND {verdict} GROUP BY item_id, status HAVING count(*) > 1"
                )
            ).all()
        )


def run_crash_test(
    database_url: str,
    *,
    kills: int,
    prescriptions: int,
    seed: int = 1,
    adapter: str = "fhir-rest",
    drain_timeout: float = 180.0,
) -> CrashReport:
    db = Database(database_url, pool_size=2)
    db.migrate()
    with tempfile.TemporaryDirectory() as data_dir, _rig(adapter, db, Path(data_dir), seed) as rig:
        _register(db, rig)
        short_forms = _accept(db, prescriptions, seed)
        mid_send = _kill_repeatedly(db, database_url, data_dir, rig, kills, seed)
        _finish(db, database_url, data_dir, rig, prescriptions, drain_timeout)
        taken = rig.provider_orders()
        received = rig.received()
    finished = _finished(db, rig)
    applied_twice = _applied_twice(db, rig)
    db.dispose()
    reached = sum(1 for short_form in short_forms if short_form in set(taken))
    return CrashReport(
        kills=kills,
        kills_mid_send=mid_send,
        prescriptions=len(short_forms),
        reached_provider=reached,
        lost=len(short_forms) - reached,
        accepted_more_than_once=len(taken) - len(set(taken)),
        requests_received=received,
        not_sent_at_gateway=len(short_forms) - finished,
        applied_twice=applied_twice,
        adapter=adapter,
    )


@contextmanager
def _rig(adapter: str, db: Database, folder: Path, seed: int) -> Iterator[Rig]:
    makers = {
        "fhir-rest": _fhir_rest_rig,
        "hl7v2-mllp": _mllp_rig,
        "csv-drop": _csv_drop_rig,
        "pull": _pull_rig,
    }
    if adapter not in makers:
        raise ValueError(f"adapter is one of {', '.join(ADAPTERS)}")
    with makers[adapter](db, folder, seed) as rig:
        yield rig


@contextmanager
def _fhir_rest_rig(_db: Database, _folder: Path, seed: int) -> Iterator[Rig]:
    # A provider that takes half a second to answer: kills land while requests are in flight.
    with SimulatorServer("VNCEL", seed=seed, lifecycle=False, delay_seconds=0.5) as simulator:
        yield Rig(
            "fhir-rest",
            {"base_url": simulator.base_url, "timeout_seconds": 5.0},
            "sent",
            lambda: [order.short_form_id for order in simulator.orders()],
            lambda: sum(simulator.receipt_counts().values()),
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _mllp_rig(_db: Database, _folder: Path, seed: int) -> Iterator[Rig]:
    # Slow ACKs, and status messages sent to the listener of whichever worker is alive (retried).
    listener = _free_port()
    with MllpSimulatorServer(
        "VNCEL",
        seed=seed,
        delay_seconds=0.3,
        status_port=listener,
        status_retry_seconds=0.1,
        status_retry_attempts=20,
        status_ack_timeout_seconds=3,
        **_LIFECYCLE,
    ) as simulator:
        yield Rig(
            "hl7v2-mllp",
            {
                "host": "127.0.0.1",
                "port": simulator.port,
                "ack_timeout_seconds": 5,
                "connect_timeout_seconds": 2,
                "inbound_allowed_addresses": "127.0.0.1",
            },
            "delivered",
            lambda: [order.short_form_id for order in simulator.orders()],
            lambda: sum(simulator.receipt_counts().values()),
            environment={"HOMECARE_MLLP_LISTEN": f"127.0.0.1:{listener}"},
        )


@contextmanager
def _csv_drop_rig(_db: Database, folder: Path, seed: int) -> Iterator[Rig]:
    # Over SFTP, so a send (and a status poll) takes a round trip or two; killed the moment one is seen.
    with FolderSimulatorServer(
        folder / "provider", "VNCEL", sftp=True, seed=seed, poll_interval_seconds=0.05, **_LIFECYCLE
    ) as simulator:
        yield Rig(
            "csv-drop",
            simulator.sftp_settings(poll_interval_seconds=0.1),
            "delivered",
            lambda: [order.short_form_id for order in simulator.orders()],
            lambda: sum(simulator.receipt_counts().values()),
            kill_delay=0.05,
        )


@contextmanager
def _pull_rig(db: Database, folder: Path, seed: int) -> Iterator[Rig]:
    # `serve` processes (API and dispatcher): the provider polls them, holds leases and acknowledges.
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    pair = generate_client_key("ES256")
    with db.write() as session:
        if get_client(session, "crash-vncel") is None:
            add_client(
                session,
                client_id="crash-vncel",
                role=Role.PROVIDER,
                ods_code="VNCEL",
                scopes="system/Task.rs system/Task.cu system/MedicationRequest.rs",
                keys=KeySource(jwks=pair.jwks, jwks_url=None),
                now=system_clock(),
            )
    config = PullSimulatorConfig(
        ods="VNCEL",
        seed=seed,
        gateway_url=base_url,
        client_id="crash-vncel",
        kid=pair.kid,
        algorithm="ES256",
        poll_interval_seconds=0.2,
        page_size=3,
        status_retry_seconds=0.2,
        status_retry_attempts=20,
        **_LIFECYCLE,
    )
    with PullSimulator(config, key=private_key(pair.private_pem)) as simulator:
        yield Rig(
            "pull",
            {"lease_seconds": 10, "unpulled_alert_seconds": 3600},
            "delivered",
            lambda: [order.short_form_id for order in simulator.orders()],
            lambda: len(simulator.task_updates()),
            command=["serve", "--port", str(port)],
            environment={"HOMECARE_PUBLIC_BASE_URL": base_url},
            kill_delay=0.5,
            # The provider is pulling or reporting through this process: an order leased by it and not
            # acknowledged yet, or a report it applied.
            in_flight="SELECT 1 FROM outbox WHERE state = 'held' AND lease_until IS NOT NULL "
            "AND updated_at > :since UNION ALL SELECT 1 FROM status_event "
            "WHERE source LIKE 'provider:%' AND recorded_at > :since",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", choices=ADAPTERS, default="fhir-rest")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--prescriptions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = arguments.database_url or f"sqlite:///{folder}/crash.db"
        report = run_crash_test(
            url,
            kills=arguments.kills,
            prescriptions=arguments.prescriptions,
            seed=arguments.seed,
            adapter=arguments.adapter,
        )
    for line in report.lines():
        print(line)
    if report.lost or report.accepted_more_than_once or report.not_sent_at_gateway or report.applied_twice:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
