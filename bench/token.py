"""Token endpoint benchmark: access tokens per second, each assertion's signature verified.

    python bench/token.py [--requests 4000] [--concurrency 32] [--workers 1] [--alg RS512]
                          [--database-url postgresql://...]

It starts `homecare-gateway serve` (SQLite in a temporary data folder), registers a trust client
with a fresh key pair, and signs N client assertions (unique `jti`s) before the clock starts, so
the figure is the server's: form parsing, assertion signature and claim checks, the replay-store
and audit insert in one transaction, and signing the access token. The load comes from a
keep-alive HTTP/1.1 client with C connections. Prints tokens/s and p50/p99 latency. This is a
measurement, not a test.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository instead of bench/, whose token.py would shadow the standard library's `token`.
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

from auth.assertion import ASSERTION_TYPE, load_private_key, sign_assertion

CLIENT_ID = "bench-trust"


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


async def _connection(
    port: int, bodies: asyncio.Queue[bytes], latencies: list[float], statuses: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                body = bodies.get_nowait()
            except asyncio.QueueEmpty:
                return
            request = (
                b"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
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


async def load(port: int, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    statuses: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, queue, latencies, statuses) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = sum(1 for status in statuses if status == 200)
    if ok != len(bodies):
        raise RuntimeError(f"only {ok} of {len(bodies)} requests answered 200: {sorted(set(statuses))}")
    quantiles = statistics.quantiles(latencies, n=100)
    return {"rps": len(bodies) / elapsed, "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000}


def token_requests(key_path: Path, token_url: str, count: int) -> list[bytes]:
    key = load_private_key(key_path)
    now = int(time.time())
    return [
        urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": sign_assertion(
                    key=key, kid=key.thumbprint(), client_id=CLIENT_ID, token_url=token_url, now=now
                ),
            }
        ).encode()
        for _ in range(count)
    ]


# The console script, as an operator runs it.
GATEWAY = str(Path(sys.executable).with_name("homecare-gateway"))


def cli(env: dict[str, str], *arguments: str) -> None:
    subprocess.run([GATEWAY, *arguments], env=env, check=True, capture_output=True)


def run(arguments: argparse.Namespace, folder: Path, database_url: str | None) -> dict[str, float]:
    port = free_port()
    env = {
        **os.environ,
        "HOMECARE_DATA_DIR": str(folder / "gateway"),
        "HOMECARE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "HOMECARE_LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    token_url = f"http://127.0.0.1:{port}/auth/token"
    cli(env, "clients", "keygen", "--out", str(folder / "client"), "--alg", arguments.alg)
    cli(
        env,
        *("clients", "add", "--client-id", CLIENT_ID, "--role", "trust", "--ods", "RBA"),
        *("--jwks", str(folder / "client.jwks.json"), "--scopes", "system/MedicationRequest.c"),
    )
    warmup = token_requests(folder / "client.pem", token_url, 200)
    bodies = token_requests(folder / "client.pem", token_url, arguments.requests)
    process = subprocess.Popen(
        [GATEWAY, "serve", "--port", str(port), "--workers", str(arguments.workers)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        asyncio.run(load(port, warmup, arguments.concurrency))
        return asyncio.run(load(port, bodies, arguments.concurrency))
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def database(url: str | None) -> Iterator[str | None]:
    """SQLite in the temporary folder, or a throw-away schema in the given PostgreSQL database."""
    if url is None:
        yield None
        return
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--alg", default="RS512", help="assertion algorithm (RS512, RS384, ES384, ...)")
    parser.add_argument("--database-url", help="a PostgreSQL database to run on instead of SQLite")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary, database(arguments.database_url) as url:
        figures = run(arguments, Path(temporary), url)
    print(
        f"{arguments.requests} token requests ({arguments.alg} assertions, ES256 access tokens), "
        f"{'PostgreSQL' if url else 'SQLite'}, concurrency {arguments.concurrency}, "
        f"{arguments.workers} uvicorn workers, {os.cpu_count()} cores"
    )
    print(
        f"POST /auth/token {figures['rps']:8.0f} tokens/s   "
        f"p50 {figures['p50_ms']:6.1f} ms   p99 {figures['p99_ms']:6.1f} ms"
    )


if __name__ == "__main__":
    main()
