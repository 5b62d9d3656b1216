"""Intake benchmark: prescriptions per second over real HTTP, against a raw floor in the same run.

    python bench/intake.py [--requests 6000] [--concurrency 64] [--workers 2] [--items 2]
    python bench/intake.py --peers [--workers 1,2] [--connections 16,64] [--duration 10] [--repeat 3]
    python bench/intake.py --open-loop 200[,400] [--workers 1,2] [--duration 20] [--baseline DIR]

With `--peers` it runs the side-by-side comparison of `../shared/peer-bench` (FHIRStarter, Medplum
and a raw floor, on the real 12.2 KiB EPS homecare order) with the gateway as one more target, and
prints req/s, p50/p99, server CPU ms per request and the gateway's ratio to each peer: see
`bench/side_by_side.py`. Without it:

It starts `homecare-gateway serve` (SQLite in a temporary data folder, one provider, a registered
trust client whose access token the load carries; the dispatcher is off, as this measures intake)
and a bare ASGI app that only parses the JSON with orjson and inserts the bytes into SQLite (WAL,
synchronous=NORMAL): the floor. Both run under uvicorn with the same number of workers and get the
same load: N unique, valid prescription messages (fresh identifiers, prescription IDs and NHS
numbers) posted by a keep-alive HTTP/1.1 client with C connections. It prints requests/s and
p50/p99 latency for each, and the gateway's share of the floor. This is a measurement, not a test.

First it prints the CPU time (process time, so less noisy than wall time on a shared machine) that
reading one body costs in process: orjson alone, with the duplicate-key check the gateway adds
(`fhir_profiles.strict_json`), and the message validation that follows, for scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import side_by_side
from bench.loadgen import BenchGateway, cli, free_port, post_all, report, wait_for_port
from fhir_profiles import strict_json
from fhir_profiles.builder import PrescriptionMessageBuilder
from fhir_profiles.homecare import validate_message

FLOOR_APP = """
import sqlite3, orjson, os
_db = sqlite3.connect(os.environ["FLOOR_DB"], isolation_level=None, check_same_thread=False)
_db.execute("PRAGMA journal_mode=WAL"); _db.execute("PRAGMA synchronous=NORMAL")
_db.execute("PRAGMA busy_timeout=30000")
_db.execute("CREATE TABLE IF NOT EXISTS message (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    orjson.loads(body)
    _db.execute("INSERT INTO message (body) VALUES (?)", (body,))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
"""


def make_bodies(count: int, items: int, seed: int) -> list[bytes]:
    builder = PrescriptionMessageBuilder(seed=seed, performer_ods="VNCEL")
    return [orjson.dumps(builder.build(items=items)) for _ in range(count)]


def cpu_microseconds_per_body(step: Callable[[bytes], Any], bodies: list[bytes], rounds: int = 5) -> float:
    """The least CPU time of `rounds` passes over the bodies, per body."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for body in bodies:
            step(body)
        best = min(best, time.process_time() - started)
    return best / len(bodies) * 1e6


def report_parse_cost(bodies: list[bytes]) -> None:
    sample = bodies[:1000]
    plain = cpu_microseconds_per_body(orjson.loads, sample)
    checked = cpu_microseconds_per_body(strict_json.loads, sample)
    validated = cpu_microseconds_per_body(lambda body: validate_message(orjson.loads(body), body), sample, 2)
    print(
        f"CPU per body: orjson {plain:.1f} us, with the duplicate-key check {checked:.1f} us "
        f"(+{checked - plain:.1f} us); validate_message {validated:.0f} us"
    )


def run_floor(
    workers: int, warmup: list[bytes], bodies: list[bytes], concurrency: int, folder: Path
) -> dict[str, float]:
    (folder / "floor_app.py").write_text(FLOOR_APP, encoding="utf-8")
    port = free_port()
    env = {**os.environ, "FLOOR_DB": str(folder / "floor.db"), "PYTHONPATH": str(folder)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "floor_app:app",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env=env, cwd=folder)
    try:
        wait_for_port(port)
        headers = {"Content-Type": "application/json"}
        post_all(port, "/", warmup, concurrency=concurrency, headers=headers)
        return post_all(port, "/", bodies, concurrency=concurrency, headers=headers)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_gateway(
    workers: int, warmup: list[bytes], bodies: list[bytes], concurrency: int, folder: Path
) -> dict[str, float]:
    gateway = BenchGateway(folder, workers=workers, extra_env={"HOMECARE_RUN_DISPATCHER": "false"})
    cli(
        gateway.env,
        *("providers", "add", "--ods", "VNCEL", "--name", "Bench provider", "--adapter", "fhir-rest"),
        *("--base-url", "http://127.0.0.1:9/fhir"),
    )
    path = "/fhir/$process-message"
    with gateway:
        headers = {
            "Content-Type": "application/fhir+json",
            "Authorization": f"Bearer {gateway.access_token()}",
        }
        post_all(gateway.port, path, warmup, concurrency=concurrency, headers=headers)
        return post_all(gateway.port, path, bodies, concurrency=concurrency, headers=headers)


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def side_by_side_options(arguments: argparse.Namespace, *, bodies: int) -> side_by_side.Options:
    return side_by_side.Options(
        peers=arguments.peers or "",
        workers=numbers(arguments.workers or "1,2"),
        connections=numbers(arguments.connections),
        duration=arguments.duration,
        warmup=arguments.warmup,
        repeat=arguments.repeat,
        bodies=bodies,
        template=arguments.template,
        database_url=arguments.database_url,
        log_level=arguments.log_level,
        dispatcher=not arguments.no_dispatcher,
        out=arguments.out,
        baseline=arguments.baseline,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", help="uvicorn workers (default 2); with --peers a list (default 1,2)")
    parser.add_argument("--items", type=int, default=2, help="line items per prescription (1-4)")
    side = parser.add_argument_group("side by side (--peers)")
    side.add_argument(
        "--peers",
        nargs="?",
        const="fhirstarter-2w,medplum,floor",
        default=None,
        help="run the peer benchmark; optionally which peers (default %(const)s, or none)",
    )
    side.add_argument("--connections", default="16,64")
    side.add_argument(
        "--open-loop",
        metavar="RATES",
        help="instead of the side-by-side run: the gateway alone at these steady rates (e.g. 200), "
        "open loop, p50/p99/p99.9/max from each request's due time",
    )
    side.add_argument("--duration", type=int, default=10)
    side.add_argument("--warmup", type=int, default=3)
    side.add_argument("--repeat", type=int, default=1)
    side.add_argument("--bodies", type=int, default=0, help="unique orders (default: enough for the run)")
    side.add_argument("--template", help="the order to copy (default: the harness's EPS homecare order)")
    side.add_argument("--database-url", help="a PostgreSQL database to run the gateway on instead of SQLite")
    side.add_argument("--log-level", default="INFO", help="the gateway's log level (default %(default)s)")
    side.add_argument("--no-dispatcher", action="store_true", help="serve without the in-process dispatcher")
    side.add_argument("--out", type=Path, help="write every measurement as JSON lines to this file")
    side.add_argument(
        "--baseline",
        type=Path,
        help="a folder with another version of the gateway's packages (e.g. `git archive` of a commit), "
        "measured in the same run as `baseline-Nw`",
    )
    arguments = parser.parse_args()
    if arguments.open_loop:
        side_by_side.open_loop(side_by_side_options(arguments, bodies=0), numbers(arguments.open_loop))
        return
    if arguments.peers is not None:
        rounds = arguments.repeat * len(numbers(arguments.connections))
        # Every request a new prescription, at up to 1,000/s (a gateway keeps what it took).
        bodies = arguments.bodies or 1000 * (arguments.duration + arguments.warmup) * rounds + 100
        side_by_side.run(side_by_side_options(arguments, bodies=bodies))
        return
    workers = int(arguments.workers or 2)

    bodies = make_bodies(arguments.requests, arguments.items, seed=1)
    warmup = make_bodies(300, arguments.items, seed=2)
    size = statistics.mean(len(body) for body in bodies)
    print(
        f"{arguments.requests} unique prescriptions of {arguments.items} items (~{size / 1024:.1f} KiB), "
        f"concurrency {arguments.concurrency}, {workers} uvicorn workers, {os.cpu_count()} cores"
    )
    report_parse_cost(bodies)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        floor = run_floor(workers, warmup, bodies, arguments.concurrency, folder)
        gateway = run_gateway(workers, warmup, bodies, arguments.concurrency, folder)
    report("raw floor (orjson + SQLite insert)", floor)
    report("gateway $process-message", gateway)
    print(f"gateway / floor: {gateway['rps'] / floor['rps']:.0%}")


if __name__ == "__main__":
    main()
