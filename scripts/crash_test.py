"""Crash test of delivery: kill -9 dispatcher processes mid-send, again and again, and count.

    python scripts/crash_test.py [--kills 100] [--prescriptions 200] [--database-url URL]

Accepts prescriptions into a fresh database (SQLite by default), starts a slow provider simulator,
then repeatedly starts `homecare-gateway worker` and kills it with SIGKILL while sends are in
flight. A last worker drains the outbox. It prints how many kills there were, how many
prescriptions, how many never reached the provider (must be 0) and how many the provider accepted
more than once (must be 0). The test suite runs the same function with fewer kills.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.fhir_rest.simulator import SimulatorServer
from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.clock import system_clock
from gateway.domain.context import Context
from gateway.domain.intake import receive_message_blocking
from gateway.store.db import Database
from gateway.store.outbox import stats
from gateway.store.providers import add_provider, list_providers, update_provider


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

    def lines(self) -> list[str]:
        return [
            f"kills: {self.kills} ({self.kills_mid_send} while sends were in flight)",
            f"prescriptions: {self.prescriptions}",
            f"reached the provider: {self.reached_provider}",
            f"lost: {self.lost}",
            f"accepted more than once: {self.accepted_more_than_once}",
            f"requests the provider received: {self.requests_received} (repeats are the at-least-once part)",
            f"not marked sent at the gateway: {self.not_sent_at_gateway}",
        ]


def _accept(db: Database, count: int, seed: int) -> list[str]:
    builder = PrescriptionMessageBuilder(seed=seed)
    context = Context.for_database(db)
    caller = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))
    keys = []
    for _ in range(count):
        body = orjson.dumps(builder.build(items=1))
        answer = receive_message_blocking(
            context, body=body, document=orjson.loads(body), caller=caller, request_id=str(uuid.uuid4())
        )
        keys.append(f"order-{answer.prescription_id}")
    context.close()
    return keys


def _sending(db: Database, pid: int) -> bool:
    """Whether the worker with this process id holds claimed messages (its owner id names the pid)."""
    with db.read() as session:
        found = session.execute(
            text("SELECT 1 FROM outbox WHERE state = 'sending' AND lease_owner LIKE :owner LIMIT 1"),
            {"owner": f"%:{pid}:%"},
        ).first()
    return found is not None


def _worker(database_url: str, data_dir: str) -> subprocess.Popen[bytes]:
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
        "HOMECARE_LOG_LEVEL": "WARNING",
    }
    log = (Path(data_dir) / "worker.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def run_crash_test(
    database_url: str, *, kills: int, prescriptions: int, seed: int = 1, drain_timeout: float = 120.0
) -> CrashReport:
    rng = random.Random(seed)
    db = Database(database_url, pool_size=2)
    db.migrate()
    # A provider that takes half a second to answer: kills land while requests are in flight.
    with SimulatorServer("VNCEL", seed=seed, lifecycle=False, delay_seconds=0.5) as simulator:
        settings = {"base_url": simulator.base_url, "timeout_seconds": 5.0}
        with db.write() as session:
            if any(provider.ods_code == "VNCEL" for provider in list_providers(session)):
                update_provider(session, "VNCEL", now=system_clock(), settings=settings, enabled=True)
            else:
                add_provider(
                    session,
                    ods_code="VNCEL",
                    name="Crash test provider",
                    adapter="fhir-rest",
                    settings=settings,
                    now=system_clock(),
                )
        keys = _accept(db, prescriptions, seed)
        with tempfile.TemporaryDirectory() as data_dir:
            mid_send = 0
            for _ in range(kills):
                worker = _worker(database_url, data_dir)
                deadline = time.monotonic() + 15
                # Kill it at a random moment once it has claimed messages and is sending them.
                while not _sending(db, worker.pid) and time.monotonic() < deadline and worker.poll() is None:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.8))
                sending = _sending(db, worker.pid)
                if worker.poll() is not None:
                    output = (Path(data_dir) / "worker.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"a worker exited by itself ({worker.returncode}): {output}")
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
                mid_send += 1 if sending else 0
            drain = _worker(database_url, data_dir)
            deadline = time.monotonic() + drain_timeout
            while stats(db, now=system_clock()).depth > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            drain.send_signal(signal.SIGTERM)
            drain.wait(timeout=30)
        counts = simulator.receipt_counts()
        accepted_keys = [order.idempotency_key for order in simulator.orders()]
        short_forms = [order.short_form_id for order in simulator.orders()]
    with db.read() as session:
        not_sent = int(
            session.execute(text("SELECT count(*) FROM prescription WHERE status <> 'sent'")).scalar_one()
        )
    db.dispose()
    reached = sum(1 for key in keys if counts.get(key, 0) > 0 and key in accepted_keys)
    return CrashReport(
        kills=kills,
        kills_mid_send=mid_send,
        prescriptions=len(keys),
        reached_provider=reached,
        lost=len(keys) - reached,
        accepted_more_than_once=len(short_forms)
        - len(set(short_forms))
        + len(accepted_keys)
        - len(set(accepted_keys)),
        requests_received=sum(counts.values()),
        not_sent_at_gateway=not_sent,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--prescriptions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = arguments.database_url or f"sqlite:///{folder}/crash.db"
        report = run_crash_test(
            url, kills=arguments.kills, prescriptions=arguments.prescriptions, seed=arguments.seed
        )
    for line in report.lines():
        print(line)
    if report.lost or report.accepted_more_than_once or report.not_sent_at_gateway:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
