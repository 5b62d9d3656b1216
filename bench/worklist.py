"""Worklist benchmark: one trust with 100,000 prescriptions on PostgreSQL.

    python bench/worklist.py [--database-url URL] [--prescriptions 100000] [--calls 300]

Without --database-url it works in a throw-away schema of the test database (127.0.0.1:5432/test)
and drops it afterwards; a given database is seeded when empty and used as it is otherwise (so a
second run skips the two minutes of seeding). It seeds with scripts/seed_status.py (COPY; every
prescription from trust RBA, one or two line items each, spread over every status, the events that
led there), fills in what intake keeps for the clinician pages (medicine names, status-since,
attention), vacuums, adds a clinician of RBA, and then measures, one call at a time:

1. the worklist service (`gateway.domain.worklist.worklist`: the action-needed set, both counts, one
   page of rows with medicines, reasons and patients, and its audit row) for the first page, the
   tenth, a provider filter, a status filter and a search by NHS number: p50/p99 wall and CPU ms;
2. the whole page, `GET /web/` over loopback HTTP with a signed-in session (the service, the
   session check and the HTML): p50/p99.

A measurement, not a test: it prints figures (noisy on a shared machine; CPU time is steadier).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auth.identity import Caller, Role
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.domain import people, worklist
from gateway.domain.context import Context
from gateway.logs import configure_logging
from gateway.settings import Settings
from gateway.store.db import Database, throwaway_schema

ROOT = Path(__file__).resolve().parents[1]
TRUST = "RBA"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RULES = worklist.ActionSettings(
    acceptance=timedelta(hours=24), expiring=timedelta(days=7), recent=timedelta(days=7)
)
PASSWORD = "benchmark password 1"


def _attention_backfill() -> str:
    """The statement migration 0007 fills `prescription.attention` with (the seeder predates it)."""
    path = ROOT / "gateway" / "store" / "migrations" / "versions" / "0007_clinician_accounts.py"
    spec = importlib.util.spec_from_file_location("migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.ATTENTION_BACKFILL)


def seed(url: str, prescriptions: int) -> None:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "seed_status.py"),
            *("--database-url", url, "--prescriptions", str(prescriptions)),
            *("--trusts", "1", "--patients", str(max(1, prescriptions // 3)), "--providers", "8"),
        ],
        check=True,
    )
    db = Database(url, pool_size=2)
    with db.write_connection() as connection:
        # The seeder predates these columns: give them what intake and the status changes give rows.
        connection.execute(text("UPDATE prescription SET status_since = updated_at"))
        connection.execute(text(_attention_backfill()))
        connection.execute(
            text(
                "UPDATE prescription_item SET medicine = CASE position WHEN 0 THEN "
                "'Adalimumab 40mg/0.4ml solution for injection pre-filled pens' ELSE "
                "'Etanercept 50mg/1ml solution for injection pre-filled pens' END"
            )
        )
    with db.engine.connect() as connection:
        # What autovacuum would have done by now: the worklist's indexes are read without the table.
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    people.add_user(
        db,
        username="bench",
        display_name="Bench Clinician",
        ods_code=TRUST,
        password=PASSWORD,
        clock=system_clock,
    )
    db.dispose()
    print(f"seeded and prepared in {time.perf_counter() - started:.0f} s")


def measure(calls: int, call: Callable[[], object]) -> str:
    walls, cpus = [], []
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    wq, cq = statistics.quantiles(walls, n=100), statistics.quantiles(cpus, n=100)
    return (
        f"p50 {wq[49] * 1000:6.1f} ms  p99 {wq[98] * 1000:6.1f} ms   "
        f"(CPU p50 {cq[49] * 1000:5.1f} ms, p99 {cq[98] * 1000:5.1f} ms)"
    )


def service_figures(db: Database, calls: int) -> None:
    caller = Caller("web-pages", Role.CLINICIAN, TRUST, scopes=people.CLINICIAN_SCOPES, user_id="bench")
    with db.read() as session:
        nhs_number = session.execute(text("SELECT nhs_number FROM prescription LIMIT 1")).scalar_one()
        provider = session.execute(text("SELECT provider_ods FROM prescription LIMIT 1")).scalar_one()
    ctx = Context.for_database(db)
    first = worklist.worklist(
        ctx,
        caller=caller,
        query=worklist.WorklistQuery(),
        settings=RULES,
        page_size=25,
        request_id="b",
    )
    print(f"trust {TRUST}: {first.total:,} prescriptions, {first.needing_action:,} need action")
    cases = {
        "first page": worklist.WorklistQuery(),
        "page 10": worklist.WorklistQuery(page=10),
        "one provider": worklist.WorklistQuery(provider_ods=provider),
        "status accepted": worklist.WorklistQuery(status="accepted"),
        "NHS number search": worklist.WorklistQuery(search=nhs_number),
    }
    for name, query in cases.items():

        def call(query: worklist.WorklistQuery = query) -> object:
            return worklist.worklist(
                ctx,
                caller=caller,
                query=query,
                settings=RULES,
                page_size=25,
                request_id="b",
            )

        print(f"  service, {name:18} {measure(calls, call)}")


@contextmanager
def pages_server(url: str) -> Iterator[str]:
    settings = Settings(
        database_url=url,
        public_base_url="http://127.0.0.1:8799",
        run_dispatcher=False,
        audit_seal_seconds=0,
        log_level="WARNING",
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=8799, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield "http://127.0.0.1:8799"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def page_figures(url: str, calls: int) -> None:
    with pages_server(url) as base, httpx.Client(base_url=base, follow_redirects=True, timeout=30) as http:
        page = http.get("/web/sign-in").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        http.post("/web/sign-in", data={"csrf_token": token, "username": "bench", "password": PASSWORD})

        def call() -> object:
            response = http.get("/web/")
            if response.status_code != 200 or "worklist-summary" not in response.text:
                raise RuntimeError(f"the worklist answered {response.status_code}")
            return response

        print(f"  GET /web/ (HTTP), first page  {measure(calls, call)}")


@contextmanager
def _database(given: str | None) -> Iterator[str]:
    if given is not None:
        Database(given, pool_size=1).migrate()
        yield given
        return
    with throwaway_schema(DEFAULT_URL, "bench_worklist") as url:
        Database(url, pool_size=1).migrate()
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="an empty PostgreSQL database or schema (default: throw-away)")
    parser.add_argument("--prescriptions", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=300)
    arguments = parser.parse_args()
    configure_logging(level="WARNING", json=True)
    with _database(arguments.database_url) as url:
        db = Database(url, pool_size=4)
        with db.read() as session:
            seeded = session.execute(text("SELECT count(*) FROM prescription")).scalar_one()
        if not seeded:
            seed(url, arguments.prescriptions)
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {arguments.calls} calls each, one at a time")
        service_figures(db, arguments.calls)
        db.dispose()
        page_figures(url, max(50, arguments.calls // 3))


if __name__ == "__main__":
    main()
