"""PostgreSQL scale-out on loopback: 1, 2 and 4 API processes, then as many dispatcher workers.

    python bench/scale_out.py [--quick] [--rows 1,2,4] [--prescriptions 2000] [--connections 32]
                              [--server postgresql://postgres@127.0.0.1:5432] [--pool-size 4]

For each row N it creates a database of its own (`homecare_scale_<pid>_<N>`, dropped afterwards) on
the PostgreSQL server, starts a FHIR REST provider simulator (`adapters.fhir_rest.simulator`, its
own process, lifecycle off) registered as the orders' provider, and:

1. intake: `homecare-gateway serve --workers N` (N API processes on one port; the in-process
   dispatcher off) takes unique prescriptions as fast as C keep-alive connections allow:
   prescriptions/s, p50/p99, and the API processes' CPU per request;
2. dispatch: with the outbox full, N `homecare-gateway worker` processes start and send every order
   to the simulator: orders/s from the first order the simulator holds to the last (start-up not
   counted), and the workers' CPU per order;
3. checks that every accepted prescription reached the simulator exactly once: as many orders as
   prescriptions, one receipt per idempotency key (a second request with a key would be a
   prescription sent twice).

Then it prints a table and the connection pool settings used, against the server's
`max_connections`. The load generator runs in this process, on the same cores as the servers: on a
small machine the figures show the shape (what an extra process buys), not a server's capacity.
`--quick` sends a few hundred prescriptions per row (seconds per row). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dispatch import PROCESS_MESSAGE, PROVIDER, Simulator
from bench.loadgen import GATEWAY, BenchGateway, cli, post_all
from bench.wrk_cpu import process_tree_cpu_seconds
from fhir_profiles.builder import PrescriptionMessageBuilder

# What `homecare-gateway worker` uses (gateway.server.replace_pool): its sends wait on the network.
WORKER_POOL_SIZE = 4


@dataclass(frozen=True)
class Row:
    processes: int
    intake_rps: float
    p50_ms: float
    p99_ms: float
    intake_cpu_ms: float
    dispatch_rps: float
    dispatch_cpu_ms: float
    sent: int
    unique: int
    repeats: int


def bodies(count: int, seed: int) -> list[bytes]:
    builder = PrescriptionMessageBuilder(seed=seed, performer_ods=PROVIDER)
    return [orjson.dumps(builder.build(items=2)) for _ in range(count)]


@contextmanager
def scratch_database(server: str, name: str) -> Iterator[str]:
    """A new database on the server, dropped (its connections closed) when the block ends."""
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def max_connections(server: str) -> int:
    with psycopg.connect(f"{server}/postgres") as connection:
        row = connection.execute("SHOW max_connections").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def workers(count: int, env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    started = [
        subprocess.Popen([GATEWAY, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield started
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_orders(simulator: Simulator, expected: int, timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        orders: list[dict[str, object]] = httpx.get(f"{simulator.url}/_simulator/orders", timeout=60).json()
        if len(orders) >= expected:
            return orders
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the simulator holds {len(orders)} of {expected} orders after {timeout:.0f} s"
            )
        time.sleep(0.1)


def measure(n: int, arguments: argparse.Namespace, load: list[bytes], warmup: list[bytes]) -> Row:
    name = f"homecare_scale_{os.getpid()}_{n}"
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as temporary,
        scratch_database(arguments.server, name) as url,
        Simulator() as simulator,
    ):
        gateway = BenchGateway(
            Path(temporary),
            workers=n,
            database_url=url,
            extra_env={
                "HOMECARE_RUN_DISPATCHER": "false",
                "HOMECARE_DB_POOL_SIZE": str(arguments.pool_size),
                "HOMECARE_ACCESS_TOKEN_SECONDS": "3600",
            },
        )
        cli(
            gateway.env,
            *(
                "providers",
                "add",
                "--ods",
                PROVIDER,
                "--name",
                "Simulated provider",
                "--adapter",
                "fhir-rest",
            ),
            *("--base-url", f"{simulator.url}/fhir"),
        )
        headers = {"Content-Type": "application/fhir+json"}
        with gateway:
            assert gateway.process is not None
            headers["Authorization"] = f"Bearer {gateway.access_token()}"
            post_all(
                gateway.port, PROCESS_MESSAGE, warmup, concurrency=arguments.connections, headers=headers
            )
            cpu_before = process_tree_cpu_seconds(gateway.process.pid)
            intake = post_all(
                gateway.port, PROCESS_MESSAGE, load, concurrency=arguments.connections, headers=headers
            )
            intake_cpu = process_tree_cpu_seconds(gateway.process.pid) - cpu_before
        accepted = len(warmup) + len(load)
        with workers(n, gateway.env) as running:
            # From the first order the simulator holds: the workers' start-up is not counted.
            first = len(wait_for_orders(simulator, 1, timeout=arguments.timeout))
            cpu_before = sum(process_tree_cpu_seconds(process.pid) for process in running)
            wait_for_orders(simulator, accepted, timeout=arguments.timeout)
            dispatch_cpu = sum(process_tree_cpu_seconds(process.pid) for process in running) - cpu_before
            time.sleep(1)  # anything sent twice would arrive now
        receipts = httpx.get(f"{simulator.url}/_simulator/receipts", timeout=60).json()
        orders = httpx.get(f"{simulator.url}/_simulator/orders", timeout=60).json()
    arrivals = sorted(datetime.fromisoformat(str(order["received_at"])).timestamp() for order in orders)
    span = max(arrivals[-1] - arrivals[0], 1e-6)
    counts: dict[str, int] = receipts["counts"]
    return Row(
        processes=n,
        intake_rps=intake["rps"],
        p50_ms=intake["p50_ms"],
        p99_ms=intake["p99_ms"],
        intake_cpu_ms=1000 * intake_cpu / len(load),
        dispatch_rps=(len(arrivals) - 1) / span,
        dispatch_cpu_ms=1000 * dispatch_cpu / max(len(arrivals) - first, 1),
        sent=sum(counts.values()),
        unique=len({str(order["short_form_id"]) for order in orders}),
        repeats=sum(1 for count in counts.values() if count > 1),
    )


def print_table(rows: list[Row], arguments: argparse.Namespace, accepted: int) -> None:
    print(
        "\nprocesses  intake/s  p50 ms  p99 ms  CPU ms/req  dispatch/s  CPU ms/order  "
        "sent  unique  sent twice"
    )
    for row in rows:
        print(
            f"{row.processes:>9}  {row.intake_rps:>8.0f}  {row.p50_ms:>6.1f}  {row.p99_ms:>6.1f}  "
            f"{row.intake_cpu_ms:>10.2f}  {row.dispatch_rps:>10.0f}  {row.dispatch_cpu_ms:>12.2f}  "
            f"{row.sent:>4}  {row.unique:>6}  {row.repeats:>10}"
        )
    largest = max(arguments.rows)
    api = largest * arguments.pool_size * 3
    dispatch = largest * WORKER_POOL_SIZE * 3
    print(
        f"\npools: API processes HOMECARE_DB_POOL_SIZE={arguments.pool_size} (+{2 * arguments.pool_size} "
        f"overflow) each, workers {WORKER_POOL_SIZE} (+{2 * WORKER_POOL_SIZE}) each; at {largest}+{largest} "
        f"processes at most {api + dispatch} connections against max_connections "
        f"{max_connections(arguments.server)} (each process opens what it uses: the API's batch writer one, "
        "reads a few, a worker's claims one at a time)"
    )
    print(f"{accepted} prescriptions accepted per row; {os.cpu_count()} cores shared with the load generator")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred prescriptions per row")
    parser.add_argument("--rows", default="1,2,4", help="process counts, one row each (default %(default)s)")
    parser.add_argument("--prescriptions", type=int, default=2000, help="per row (--quick: 300)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="no database name")
    parser.add_argument("--pool-size", type=int, default=4, help="HOMECARE_DB_POOL_SIZE of each API process")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the outbox to drain")
    arguments = parser.parse_args()
    arguments.rows = [int(part) for part in arguments.rows.split(",") if part.strip()]
    count = 300 if arguments.quick else arguments.prescriptions
    warmup = 50
    print(
        f"rows {arguments.rows}: {count} unique 2-item prescriptions each (+{warmup} warm-up), "
        f"{arguments.connections} connections, PostgreSQL at {arguments.server}"
    )
    rows = []
    for index, n in enumerate(arguments.rows):
        rows.append(measure(n, arguments, bodies(count, seed=100 + index), bodies(warmup, seed=200 + index)))
        print(f"  {n} process(es): {rows[-1]}", flush=True)
    print_table(rows, arguments, count + warmup)
    if any(row.repeats or row.unique != count + warmup for row in rows):
        raise SystemExit("a prescription was sent twice, or one was not sent")


if __name__ == "__main__":
    main()
