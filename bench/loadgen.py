"""What the benchmarks share: free ports, waiting for a server, a keep-alive HTTP/1.1 load generator,
and starting `homecare-gateway serve` with a registered trust client."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from auth.assertion import ASSERTION_TYPE, load_private_key, sign_assertion
from gateway.store.db import throwaway_schema

# The console script, as an operator runs it.
GATEWAY = str(Path(sys.executable).with_name("homecare-gateway"))
CLIENT_ID = "bench-trust"
# A benchmark is one client on one address going as fast as it can: far above the default rate
# limits (README, Security, "Rate limits"). The limits stay on, so their cost is in the figures,
# but set so high that nothing is throttled.
UNTHROTTLED = {
    f"HOMECARE_RATE_LIMIT_{name}": "100000000/minute"
    for name in ("TOKEN_PER_ADDRESS", "TOKEN_PER_CLIENT", "API_PER_ADDRESS", "API_PER_CLIENT")
}


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
    port: int, head: bytes, bodies: asyncio.Queue[bytes], latencies: list[float], statuses: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            try:
                body = bodies.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            statuses.append(await _exchange(reader, writer, head, body))
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(port: int, head: bytes, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    statuses: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, head, queue, latencies, statuses) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = sum(1 for status in statuses if 200 <= status < 300)
    if ok != len(bodies):
        raise RuntimeError(f"only {ok} of {len(bodies)} requests answered 2xx: {sorted(set(statuses))}")
    quantiles = statistics.quantiles(latencies, n=100)
    return {"rps": len(bodies) / elapsed, "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000}


def post_all(
    port: int, path: str, bodies: list[bytes], *, concurrency: int, headers: dict[str, str]
) -> dict[str, float]:
    """POST every body over `concurrency` keep-alive connections: requests/s and p50/p99 in ms."""
    return asyncio.run(_load(port, _head(path, headers), bodies, concurrency))


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> int:
    """One request on a keep-alive connection: its answer's status (the answer read to its end)."""
    writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
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
    return int(status_line.split()[1])


async def _open_loop(
    port: int, head: bytes, bodies: list[bytes], rate: float, connections: int
) -> dict[str, float]:
    """Open loop: request i is due at i / rate seconds, whatever the answers before it did. Latency is
    from when a request was due to its whole answer, so time spent waiting for a free connection
    (the server falling behind) counts: no coordinated omission."""
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    latencies: list[float] = []
    statuses: list[int] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                scheduled, body = await due.get()
                if not body:
                    return
                statuses.append(await _exchange(reader, writer, head, body))
                latencies.append(time.perf_counter() - scheduled)
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.2)  # connections open before the clock starts
    started = time.perf_counter()
    for index, body in enumerate(bodies):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait((scheduled, body))
    for _ in workers:
        due.put_nowait((0.0, b""))
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    ok = sum(1 for status in statuses if 200 <= status < 300)
    quantiles = statistics.quantiles(latencies, n=1000, method="inclusive")  # never beyond the data
    return {
        "rate": rate,
        "rps": len(bodies) / elapsed,
        "p50_ms": quantiles[499] * 1000,
        "p99_ms": quantiles[989] * 1000,
        "p999_ms": quantiles[998] * 1000,
        "max_ms": max(latencies) * 1000,
        "non_2xx": len(statuses) - ok,
    }


def post_at_rate(
    port: int,
    path: str,
    bodies: list[bytes],
    *,
    rate: float,
    headers: dict[str, str],
    connections: int = 64,
) -> dict[str, float]:
    """POST the bodies at a steady `rate` a second (open loop) over up to `connections` keep-alive
    connections: the achieved rate, p50/p99/p99.9/max latency in ms from each request's due time."""
    return asyncio.run(_open_loop(port, _head(path, headers), bodies, rate, connections))


def _head(path: str, headers: dict[str, str]) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + b"".join(
        f"{name}: {value}\r\n".encode() for name, value in headers.items()
    )


def report(name: str, figures: dict[str, float]) -> None:
    print(
        f"{name:36s} {figures['rps']:8.0f} req/s   "
        f"p50 {figures['p50_ms']:6.1f} ms   p99 {figures['p99_ms']:6.1f} ms"
    )


def cli(env: dict[str, str], *arguments: str) -> None:
    subprocess.run([GATEWAY, *arguments], env=env, check=True, capture_output=True)


class ServerProcess:
    """A server in a child process on `self.port`, stopped (SIGTERM) when the `with` block ends."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@dataclass
class BenchClient:
    """A registered API client with its own key pair, which signs assertions and fetches tokens."""

    folder: Path
    env: dict[str, str]
    token_url: str
    client_id: str = CLIENT_ID
    role: str = "trust"
    ods: str = "RBA"
    scopes: str = "system/MedicationRequest.c"
    algorithm: str = "ES384"
    # The token URL the gateway publishes (the assertion's `aud`), when not the one posted to.
    audience: str | None = None

    def __post_init__(self) -> None:
        self.key_file = self.folder / f"{self.client_id}.pem"
        cli(
            self.env, "clients", "keygen", "--out", str(self.folder / self.client_id), "--alg", self.algorithm
        )
        cli(
            self.env,
            *("clients", "add", "--client-id", self.client_id, "--role", self.role, "--ods", self.ods),
            *("--jwks", str(self.folder / f"{self.client_id}.jwks.json"), "--scopes", self.scopes),
        )

    def token_requests(self, count: int) -> list[bytes]:
        """Form bodies for /auth/token, each with a freshly signed assertion (unique jti)."""
        key = load_private_key(self.key_file)
        now = int(time.time())
        return [
            urlencode(
                {
                    "grant_type": "client_credentials",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": sign_assertion(
                        key=key,
                        kid=key.thumbprint(),
                        client_id=self.client_id,
                        token_url=self.audience or self.token_url,
                        now=now,
                    ),
                }
            ).encode()
            for _ in range(count)
        ]

    def access_token(self) -> str:
        import httpx

        response = httpx.post(
            self.token_url,
            content=self.token_requests(1)[0],
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


@dataclass
class BenchGateway(ServerProcess):
    """`homecare-gateway serve` in a temporary folder with a registered trust client (RBA by default)."""

    folder: Path
    workers: int = 1
    client_id: str = CLIENT_ID
    ods: str = "RBA"
    scopes: str = "system/MedicationRequest.c"
    algorithm: str = "ES384"
    database_url: str | None = None
    extra_env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self.token_url = f"http://127.0.0.1:{self.port}/auth/token"
        self.env = {
            **os.environ,
            "HOMECARE_DATA_DIR": str(self.folder / "gateway"),
            "HOMECARE_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.port}",
            "HOMECARE_LOG_LEVEL": "WARNING",
            **UNTHROTTLED,
            "HOMECARE_ADMIN_LISTEN": "off",
            **(self.extra_env or {}),
        }
        self.env.pop("DATABASE_URL", None)
        if self.database_url:
            self.env["DATABASE_URL"] = self.database_url
        self.client = self.add_client(self.client_id, role="trust", ods=self.ods, scopes=self.scopes)

    def add_client(self, client_id: str, *, role: str, ods: str, scopes: str) -> BenchClient:
        published = f"{self.env['HOMECARE_PUBLIC_BASE_URL'].rstrip('/')}/auth/token"
        return BenchClient(
            self.folder,
            self.env,
            self.token_url,
            client_id,
            role,
            ods,
            scopes,
            algorithm=self.algorithm,
            audience=published,
        )

    def token_requests(self, count: int) -> list[bytes]:
        return self.client.token_requests(count)

    def access_token(self) -> str:
        return self.client.access_token()

    def __enter__(self) -> BenchGateway:
        self.start([GATEWAY, "serve", "--port", str(self.port), "--workers", str(self.workers)], self.env)
        return self


def database(url: str | None) -> AbstractContextManager[str | None]:
    """SQLite in the temporary folder (None), or a throw-away schema in the given PostgreSQL database."""
    return nullcontext(None) if url is None else throwaway_schema(url, "bench")
