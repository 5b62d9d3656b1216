"""Intake benchmark: prescriptions per second over real HTTP, against a raw floor in the same run.

    python bench/intake.py [--requests 6000] [--concurrency 64] [--workers 2] [--items 2]

It starts `homecare-gateway serve` (SQLite in a temporary data folder, one demo provider) and a
bare ASGI app that only parses the JSON with orjson and inserts the bytes into SQLite (WAL,
synchronous=NORMAL): the floor. Both run under uvicorn with the same number of workers and get
the same load: N unique, valid prescription messages (fresh identifiers, prescription IDs and NHS
numbers) posted by a keep-alive HTTP/1.1 client with C connections. It prints requests/s and
p50/p99 latency for each, and the gateway's share of the floor. This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_profiles.builder import PrescriptionMessageBuilder

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


async def _client(
    port: int,
    path: str,
    headers: bytes,
    bodies: asyncio.Queue[bytes],
    latencies: list[float],
    statuses: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                body = bodies.get_nowait()
            except asyncio.QueueEmpty:
                return
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n".encode()
                + headers
                + b"\r\n"
                + body
            )
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses.append(int(status_line.split()[1]))
    finally:
        writer.close()


async def load(
    port: int, path: str, headers: bytes, bodies: list[bytes], concurrency: int
) -> dict[str, float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    statuses: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(_client(port, path, headers, queue, latencies, statuses) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    ok = sum(1 for status in statuses if status == 200)
    if ok != len(bodies):
        raise RuntimeError(f"only {ok} of {len(bodies)} requests answered 200: {sorted(set(statuses))}")
    quantiles = statistics.quantiles(latencies, n=100)
    return {"rps": len(bodies) / elapsed, "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000}


def make_bodies(count: int, items: int, seed: int) -> list[bytes]:
    builder = PrescriptionMessageBuilder(seed=seed, performer_ods="VNCEL")
    return [orjson.dumps(builder.build(items=items)) for _ in range(count)]


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
        headers = b"Content-Type: application/json\r\n"
        asyncio.run(load(port, "/", headers, warmup, concurrency))
        return asyncio.run(load(port, "/", headers, bodies, concurrency))
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_gateway(
    workers: int, warmup: list[bytes], bodies: list[bytes], concurrency: int, folder: Path
) -> dict[str, float]:
    data_dir = folder / "gateway"
    token = "bench-token"
    env = {
        **os.environ,
        "HOMECARE_DATA_DIR": str(data_dir),
        "HOMECARE_DEV_TOKEN": token,
        "HOMECARE_LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "providers",
            "add",
            "--ods",
            "VNCEL",
            "--name",
            "Bench provider",
            "--adapter",
            "fhir-rest",
            "--base-url",
            "http://127.0.0.1:9/fhir",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        headers = f"Content-Type: application/fhir+json\r\nAuthorization: Bearer {token}\r\n".encode()
        asyncio.run(load(port, "/fhir/$process-message", headers, warmup, concurrency))
        return asyncio.run(load(port, "/fhir/$process-message", headers, bodies, concurrency))
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=2, help="line items per prescription (1-4)")
    arguments = parser.parse_args()

    bodies = make_bodies(arguments.requests, arguments.items, seed=1)
    warmup = make_bodies(300, arguments.items, seed=2)
    size = statistics.mean(len(body) for body in bodies)
    print(
        f"{arguments.requests} unique prescriptions of {arguments.items} items (~{size / 1024:.1f} KiB), "
        f"concurrency {arguments.concurrency}, {arguments.workers} uvicorn workers, {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        floor = run_floor(arguments.workers, warmup, bodies, arguments.concurrency, folder)
        gateway = run_gateway(arguments.workers, warmup, bodies, arguments.concurrency, folder)
    for name, figures in (
        ("raw floor (orjson + SQLite insert)", floor),
        ("gateway $process-message", gateway),
    ):
        print(
            f"{name:36s} {figures['rps']:8.0f} req/s   "
            f"p50 {figures['p50_ms']:6.1f} ms   p99 {figures['p99_ms']:6.1f} ms"
        )
    print(f"gateway / floor: {gateway['rps'] / floor['rps']:.0%}")


if __name__ == "__main__":
    main()
