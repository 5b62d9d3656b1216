"""File-drop benchmark: order files written by the `csv-drop` adapter, each one atomically and durably.

    python bench/file_drop.py [--files 2000] [--format csv|fhir-json] [--dir PATH] [--concurrency 1]

The orders (one to four items each) are built before the clock starts; each send then does what the
adapter does per message: read the Bundle and write the `homecare-order/1` CSV (or take the Bundle's bytes
for `fhir-json`), write it under a temporary name, fsync the file, link it to its final name (never
replacing one), remove the temporary name and fsync the folder. `--dir` should be on the disk the gateway
would use (default: a temporary folder under ./var). Prints files/s, p50/p99 per file and CPU per file.
This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from adapters.base import Order
from adapters.csv_drop.adapter import CsvDropAdapter
from adapters.csv_drop.settings import CsvDropSettings
from fhir_profiles.builder import PrescriptionMessageBuilder


def orders(count: int) -> list[Order]:
    builder = PrescriptionMessageBuilder(seed=11, performer_ods="VNCEL")
    built = []
    for number in range(count):
        message = builder.build(items=1 + number % 4)
        short_form = message["entry"][1]["resource"]["groupIdentifier"]["value"]
        built.append(Order("new", f"p{number}", short_form, "RBA", "VNCEL", orjson.dumps(message)))
    return built


async def run(
    folder: Path, work: list[Order], order_format: str, concurrency: int
) -> tuple[float, list[float], float]:
    (folder / "orders").mkdir()
    (folder / "status").mkdir()
    settings = CsvDropSettings(
        order_dir=str(folder / "orders"), status_dir=str(folder / "status"), order_format=order_format
    )
    adapter = CsvDropAdapter(settings)
    latencies: list[float] = []

    async def sender(share: list[tuple[int, Order]]) -> None:
        for number, order in share:
            started = time.perf_counter()
            result = await adapter.send(order, idempotency_key=f"order-{number}")
            latencies.append(time.perf_counter() - started)
            assert result.is_delivered and "written" in result.detail

    cpu, wall = time.process_time(), time.perf_counter()
    numbered = list(enumerate(work))
    await asyncio.gather(*(sender(numbered[n::concurrency]) for n in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await adapter.aclose()
    return wall, latencies, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--format", default="csv", choices=["csv", "fhir-json"])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary folder under ./var)")
    parser.add_argument("--concurrency", type=int, default=1)
    arguments = parser.parse_args()
    work = orders(arguments.files)
    parent = (arguments.dir or Path("var")).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as temporary:
        wall, latencies, cpu = asyncio.run(
            run(Path(temporary), work, arguments.format, arguments.concurrency)
        )
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"{arguments.files} order files ({arguments.format}, 1-4 items), concurrency {arguments.concurrency}, "
        f"{os.cpu_count()} cores, under {parent.resolve()}"
    )
    print(
        f"{'order file, fsync and link':36s} {arguments.files / wall:8.0f} files/s  "
        f"p50 {statistics.median(latencies) * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms   "
        f"CPU {cpu / arguments.files * 1000:5.2f} ms/file"
    )


if __name__ == "__main__":
    main()
