"""HL7 v2 over MLLP benchmark: RDE^O11 orders sent by the `hl7v2-mllp` adapter, each answered by an ACK.

    python bench/mllp.py [--messages 2000] [--connections 1]

The MLLP provider simulator runs in a child process on loopback (acknowledging only, no lifecycle). The
orders (one to four items each) are built before the clock starts as the dispatcher would hand them over;
each send then does what the adapter does per message: read the Bundle, build the RDE^O11 with hl7apy,
frame it, write it, and wait for the ACK and read it. HL7 original-mode acknowledgement allows one
message in flight per connection, so `--connections N` runs N adapters (N providers, or N connections)
side by side. Prints messages/s, p50/p99 round trip, and the CPU time this process spent per message.
This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from adapters.base import Order
from adapters.hl7v2_mllp.adapter import Hl7v2MllpAdapter
from adapters.hl7v2_mllp.settings import Hl7v2MllpSettings
from fhir_profiles.builder import PrescriptionMessageBuilder


def orders(count: int) -> list[Order]:
    builder = PrescriptionMessageBuilder(seed=7, performer_ods="VNCEL")
    built = []
    for number in range(count):
        message = builder.build(items=1 + number % 4)
        short_form = message["entry"][1]["resource"]["groupIdentifier"]["value"]
        built.append(Order("new", f"p{number}", short_form, "RBA", "VNCEL", orjson.dumps(message)))
    return built


def start_simulator() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.hl7v2_mllp.simulator", "--port", "0", "--no-lifecycle"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, int(line.rsplit(":", 1)[1])


async def run(port: int, work: list[Order], connections: int) -> tuple[float, list[float], float]:
    adapters = [Hl7v2MllpAdapter(Hl7v2MllpSettings(host="127.0.0.1", port=port)) for _ in range(connections)]
    latencies: list[float] = []

    async def sender(adapter: Hl7v2MllpAdapter, share: list[Order], offset: int) -> None:
        for position, order in enumerate(share):
            started = time.perf_counter()
            result = await adapter.send(order, idempotency_key=f"order-{offset}-{position}")
            latencies.append(time.perf_counter() - started)
            assert result.is_delivered, result

    await asyncio.gather(*(sender(a, work[:20], 10**6 + n) for n, a in enumerate(adapters)))  # warm up
    latencies.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    shares = [work[n::connections] for n in range(connections)]
    await asyncio.gather(
        *(sender(a, share, n) for n, (a, share) in enumerate(zip(adapters, shares, strict=True)))
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for adapter in adapters:
        await adapter.aclose()
    return wall, latencies, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=1)
    arguments = parser.parse_args()
    work = orders(arguments.messages)
    process, port = start_simulator()
    try:
        wall, latencies, cpu = asyncio.run(run(port, work, arguments.connections))
    finally:
        process.terminate()
        process.wait(10)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"{arguments.messages} RDE^O11 (1-4 items) over {arguments.connections} MLLP connection(s), "
        f"{os.cpu_count()} cores, simulator in a child process"
    )
    print(
        f"{'RDE^O11 -> ACK':36s} {arguments.messages / wall:8.0f} msg/s   "
        f"p50 {statistics.median(latencies) * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms   "
        f"CPU {cpu / arguments.messages * 1000:5.2f} ms/msg (sender)"
    )


if __name__ == "__main__":
    main()
