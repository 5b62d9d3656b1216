"""KPI benchmark: rebuilding the monthly figures and reading MeasureReports on a large PostgreSQL database.

    python scripts/seed_status.py --database-url URL            # once: 1,000,000 prescriptions
    python bench/kpi.py --database-url URL [--months 3] [--reads 500] [--fold-events 50000]

1. a full recompute (every month, from the whole log: what `homecare-gateway kpi recompute --all`
   does, and what brings a new aggregate up to date), wall and CPU time;
2. a month's recompute (`kpi recompute --month`) for the last `--months` complete months: wall and
   CPU time each;
3. `homecare-gateway serve` on the database (its KPI fold running, with nothing new to fold), then
   over real HTTP, one request at a time: the public MeasureReports of a month (every provider), one
   provider's, a trust's own, `$evaluate-measure` over twelve months, the CSV export, and the public
   performance page (`/performance`, every provider with twelve months of trend lines) and a
   provider's page (`/performance/{ODS}`, a chart and a table per measure): p50/p99;
4. the incremental fold: the fold's place is moved back `--fold-events` events and folded forward
   again (events/s). This counts those events twice: the figures are wrong afterwards (a throw-away
   database; `kpi recompute --all` puts them right).

A measurement, not a test: it prints figures. On a shared machine they are noisy: CPU time is the
steadier figure for the recomputes (the database's own work is not in it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import BenchGateway
from gateway.kpi import service
from gateway.kpi.months import month_of, months_between
from gateway.kpi.performance import HEADLINE_DEFINITIONS, performance
from gateway.store import kpi as store
from gateway.store.db import Database

TRUST = "RBA"
CLOSE_DAYS = 5


def timed(name: str, work: Callable[[], object]) -> float:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{name:44s} {wall:7.1f} s wall   {cpu:7.1f} s CPU   ({result})")
    return wall


def latencies(name: str, count: int, call: Callable[[int], httpx.Response]) -> None:
    call(0)  # warm-up
    samples = []
    for index in range(count):
        started = time.perf_counter()
        response = call(index)
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}: {response.text[:300]}")
    quantiles = statistics.quantiles(samples, n=100)
    print(
        f"{name:44s} p50 {quantiles[49] * 1000:6.1f} ms   p99 {quantiles[98] * 1000:6.1f} ms   ({count} requests)"
    )


def page_reads(db: Database, count: int) -> None:
    """The public pages' figures read from the aggregate and worked out, every time (no kept copy)."""
    for name, options in (
        ("/performance figures, read each time", {"definitions": HEADLINE_DEFINITIONS}),
        ("/performance/{ODS} figures, read each time", {"provider_ods": "HC001"}),
    ):
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            performance(db, now=datetime.now(UTC), threshold=5, **options)
            samples.append(time.perf_counter() - started)
        quantiles = statistics.quantiles(samples, n=100)
        print(
            f"{name:44s} p50 {quantiles[49] * 1000:6.1f} ms   p99 {quantiles[98] * 1000:6.1f} ms   ({count} reads)"
        )


def recompute(db: Database, month: str | None, now: datetime) -> int:
    if month is None:
        return service.recompute_all(db, now=now, close_days=CLOSE_DAYS)
    return service.recompute_month(db, month, now=now, close_days=CLOSE_DAYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="the database scripts/seed_status.py filled")
    parser.add_argument("--months", type=int, default=3, help="complete months to recompute one by one")
    parser.add_argument("--reads", type=int, default=500, help="requests per kind of read")
    parser.add_argument("--fold-events", type=int, default=50_000, help="events to fold again")
    parser.add_argument("--skip-full", action="store_true", help="the aggregate is already up to date")
    arguments = parser.parse_args()

    db = Database(arguments.database_url, pool_size=2)
    db.migrate()
    with db.read() as session:
        prescriptions = session.execute(text("SELECT count(*) FROM prescription")).scalar_one()
        events, first, last = session.execute(
            text("SELECT count(*), min(occurred_at), max(occurred_at) FROM status_event")
        ).one()
    if not prescriptions:
        sys.exit("the database holds no prescriptions: run scripts/seed_status.py first")
    print(f"{prescriptions:,} prescriptions, {events:,} status events, {os.cpu_count()} cores")
    now = datetime.now(UTC)
    complete = [m for m in months_between(month_of(first), month_of(last)) if m < month_of(now)]
    if not arguments.skip_full:
        timed("full recompute (every month)", lambda: f"{recompute(db, None, now):,} prescriptions")
    walls = []
    for month in complete[-arguments.months :]:

        def month_recompute(m: str = month) -> str:
            return f"{recompute(db, m, now):,} prescriptions"

        walls.append(timed(f"recompute of {month}", month_recompute))
    if walls:
        print(f"{'a month, slowest':44s} {max(walls):7.1f} s wall")

    month = complete[-1]
    year = complete[-12:]
    with tempfile.TemporaryDirectory() as temporary:
        gateway = BenchGateway(
            Path(temporary),
            workers=1,
            client_id=f"bench-kpi-{os.getpid()}",
            ods=TRUST,
            scopes="system/Task.rs",
            database_url=arguments.database_url,
            extra_env={"HOMECARE_RUN_DISPATCHER": "false", "HOMECARE_KPI_FOLD_SECONDS": "5"},
        )
        with gateway, httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=60) as public:
            trust = httpx.Client(
                base_url=public.base_url,
                headers={"Authorization": f"Bearer {gateway.access_token()}"},
                timeout=60,
            )
            count = arguments.reads
            latencies(
                f"MeasureReport {month}, every provider",
                count,
                lambda _: public.get("/fhir/MeasureReport", params={"period": month}),
            )
            latencies(
                f"MeasureReport {month}, one provider", count,
                lambda i: public.get("/fhir/MeasureReport", params={"period": month, "subject": f"HC00{i % 8 + 1}"}),
            )  # fmt: skip
            latencies(
                f"MeasureReport {month}, a trust's own",
                count,
                lambda _: trust.get("/fhir/MeasureReport", params={"period": month}),
            )
            latencies(
                f"$evaluate-measure, {len(year)} months, national", count,
                lambda _: public.get(
                    "/fhir/Measure/failed-deliveries/$evaluate-measure",
                    params={"periodStart": year[0], "periodEnd": year[-1]},
                ),
            )  # fmt: skip
            latencies(
                f"CSV export {month}", count, lambda _: public.get("/kpi/export.csv", params={"month": month})
            )
            # The server keeps the page's figures for a fold interval: these are mostly kept ones.
            latencies("public page /performance", count, lambda _: public.get("/performance"))
            latencies(
                "a provider's page /performance/{ODS}",
                count,
                lambda i: public.get(f"/performance/HC00{i % 8 + 1}"),
            )
            trust.close()

    page_reads(db, arguments.reads)
    with db.transaction() as tx:
        position = store.fold_position(tx)
        store.advance_fold(tx, max(0, position - arguments.fold_events), now=now)
    wall = timed(
        f"fold of the last {arguments.fold_events:,} events",
        lambda: (
            f"{service.fold_new_events(db, now=datetime.now(UTC), close_days=CLOSE_DAYS).events:,} events"
        ),
    )
    print(f"{'fold rate':44s} {arguments.fold_events / wall:7.0f} events/s")
    db.dispose()


if __name__ == "__main__":
    main()
