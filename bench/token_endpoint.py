"""Token endpoint benchmark: access tokens per second, each assertion's signature verified.

    python bench/token_endpoint.py [--requests 4000] [--concurrency 32] [--workers 1] [--alg RS512]
                          [--database-url postgresql://...]

It starts `homecare-gateway serve` (SQLite in a temporary data folder), registers a trust client
with a fresh key pair, and signs N client assertions (unique `jti`s) before the clock starts, so
the figure is the server's: form parsing, assertion signature and claim checks, the replay-store
and audit insert in one transaction, and signing the access token. The load comes from a
keep-alive HTTP/1.1 client with C connections. Prints tokens/s and p50/p99 latency. This is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import BenchGateway, database, post_all, report

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--alg", default="RS512", help="assertion algorithm (RS512, RS384, ES384, ...)")
    parser.add_argument("--database-url", help="a PostgreSQL database to run on instead of SQLite")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary, database(arguments.database_url) as url:
        gateway = BenchGateway(
            Path(temporary), workers=arguments.workers, algorithm=arguments.alg, database_url=url
        )
        warmup = gateway.token_requests(200)
        bodies = gateway.token_requests(arguments.requests)
        with gateway:
            post_all(gateway.port, "/auth/token", warmup, concurrency=arguments.concurrency, headers=FORM)
            figures = post_all(
                gateway.port, "/auth/token", bodies, concurrency=arguments.concurrency, headers=FORM
            )
    print(
        f"{arguments.requests} token requests ({arguments.alg} assertions, ES256 access tokens), "
        f"{'PostgreSQL' if url else 'SQLite'}, concurrency {arguments.concurrency}, "
        f"{arguments.workers} uvicorn workers, {os.cpu_count()} cores"
    )
    report("POST /auth/token", figures)


if __name__ == "__main__":
    main()
