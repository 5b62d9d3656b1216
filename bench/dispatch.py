"""Dispatch benchmark: from the intake answer to the provider holding the order.

    python bench/dispatch.py [--rate 100] [--seconds 60] [--ceiling 3000] [--workers 1]
                             [--database-url postgresql://postgres@127.0.0.1:5432/test]

It starts a provider simulator (`python -m adapters.fhir_rest.simulator`, lifecycle off) and
`homecare-gateway serve` with its in-process dispatcher (SQLite in a temporary data folder, or a
throw-away schema in the given PostgreSQL database), registers the simulator as the provider, then:

1. steady load: posts unique prescriptions at a fixed rate (open loop: a request leaves on schedule
   whether or not earlier ones have been answered) and, for each, takes the time from the gateway's
   200 to the simulator's receipt of the order (both clocks are this machine's): p50/p99/max;
2. ceiling: posts `--ceiling` prescriptions as fast as 32 connections allow and reports how many per
   second reached the simulator, from the first request to the last order received.

A measurement, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import BenchGateway, ServerProcess, cli, database, free_port, post_all
from fhir_profiles.builder import PrescriptionMessageBuilder

PROVIDER = "VNCEL"
PROCESS_MESSAGE = "/fhir/$process-message"


def prescriptions(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(short-form prescription ID, message body) for `count` unique one-item prescriptions."""
    builder = PrescriptionMessageBuilder(seed=seed, performer_ods=PROVIDER)
    made = []
    for _ in range(count):
        message = builder.build(items=1)
        short_form = message["entry"][1]["resource"]["groupIdentifier"]["value"]
        made.append((str(short_form), orjson.dumps(message)))
    return made


class Simulator(ServerProcess):
    """The provider simulator in its own process, so it shares no interpreter with the load."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Simulator:
        command = [sys.executable, "-m", "adapters.fhir_rest.simulator", "--port", str(self.port)]
        self.start([*command, "--ods", PROVIDER, "--no-lifecycle"])
        return self

    def received(self, expected: int, timeout: float = 120) -> dict[str, float]:
        """Short-form ID -> epoch seconds the simulator took the order, once `expected` are there."""
        deadline = time.monotonic() + timeout
        while True:
            orders = httpx.get(f"{self.url}/_simulator/orders", timeout=30).json()
            if len(orders) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if len(orders) < expected:
            raise RuntimeError(f"the simulator holds {len(orders)} of {expected} orders after {timeout} s")
        return {
            order["short_form_id"]: datetime.fromisoformat(order["received_at"]).timestamp()
            for order in orders
        }

    def reset(self) -> None:
        httpx.post(f"{self.url}/_simulator/reset", timeout=30).raise_for_status()


async def paced(port: int, token: str, load: list[tuple[str, bytes]], rate: float) -> dict[str, float]:
    """POST each body at its scheduled time; short-form ID -> epoch seconds of the 200."""
    answered: dict[str, float] = {}
    failures: list[int] = []
    headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"}
    # Idle connections are let go before the server's keep-alive timeout (5 s) can close them under a request.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:

        async def send(short_form: str, body: bytes) -> None:
            response = await client.post(PROCESS_MESSAGE, content=body, headers=headers)
            if response.status_code == 200:
                answered[short_form] = time.time()
            else:
                failures.append(response.status_code)

        started = time.perf_counter()
        tasks = []
        for index, (short_form, body) in enumerate(load):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(short_form, body)))
        await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{len(failures)} requests were not accepted: {sorted(set(failures))}")
    return answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100, help="prescriptions per second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--ceiling", type=int, default=3000, help="prescriptions for the ceiling run (0: skip)"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, each with a dispatcher")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in a temporary folder)")
    arguments = parser.parse_args()

    steady = prescriptions(int(arguments.rate * arguments.seconds), seed=11)
    burst = prescriptions(arguments.ceiling, seed=12)
    print(
        f"{len(steady)} prescriptions at {arguments.rate:g}/s, then {len(burst)} as fast as possible; "
        f"{arguments.workers} uvicorn worker(s), {os.cpu_count()} cores, "
        f"{'PostgreSQL' if arguments.database_url else 'SQLite'}"
    )
    with (
        tempfile.TemporaryDirectory() as temporary,
        database(arguments.database_url) as url,
        Simulator() as simulator,
    ):
        gateway = BenchGateway(Path(temporary), workers=arguments.workers, database_url=url)
        cli(
            gateway.env,
            *("providers", "add", "--ods", PROVIDER, "--name", "Bench provider", "--adapter", "fhir-rest"),
            *("--base-url", f"{simulator.url}/fhir"),
        )
        with gateway:
            token = gateway.access_token()
            warmup = prescriptions(100, seed=13)
            asyncio.run(paced(gateway.port, token, warmup, rate=200))
            simulator.received(len(warmup))
            simulator.reset()

            answered = asyncio.run(paced(gateway.port, token, steady, arguments.rate))
            received = simulator.received(len(steady))
            latencies = sorted((received[key] - answered[key]) * 1000 for key in answered)
            quantiles = statistics.quantiles(latencies, n=100)
            print(
                f"intake 200 -> provider holds the order   p50 {quantiles[49]:6.1f} ms   "
                f"p99 {quantiles[98]:6.1f} ms   max {latencies[-1]:6.1f} ms   ({len(latencies)} orders)"
            )

            if burst:
                simulator.reset()
                started = time.time()
                intake = post_all(
                    gateway.port,
                    PROCESS_MESSAGE,
                    [body for _, body in burst],
                    concurrency=32,
                    headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"},
                )
                arrivals = simulator.received(len(burst)).values()
                elapsed = max(arrivals) - started
                print(
                    f"ceiling: {len(burst) / elapsed:6.0f} prescriptions/s delivered end to end "
                    f"(intake alone {intake['rps']:.0f}/s)"
                )


if __name__ == "__main__":
    main()
