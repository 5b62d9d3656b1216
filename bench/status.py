"""Status benchmark: Task searches and status-update intake on a large PostgreSQL database.

    python scripts/seed_status.py --database-url URL            # once: 1,000,000 prescriptions
    python bench/status.py --database-url URL [--searches 1000] [--updates 4000] [--workers 2]

It starts `homecare-gateway serve` on the seeded database (dispatcher off: nothing is sent) and
registers two clients of its own: a provider (HC001) and a trust (RBA). Then, over real HTTP:

1. Task search by owner + business-status (`GET /fhir/Task?owner=HC001&business-status=...`,
   20 a page), as the provider, one request at a time: p50/p99; the same for the next page;
2. Task search by patient (`POST /fhir/Task/_search` with the NHS number in the form body), as the
   trust, for its own patients: p50/p99;
3. status updates: the provider reports `in-preparation` for its accepted items, one Task per
   request over 8 connections (updates/s, p50/p99), then `dispensed` for the same items in
   transaction Bundles of 50 (Tasks/s).

A measurement, not a test: it prints figures. Each run changes the items it reports on; seed a
fresh database to repeat it exactly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.fhir_rest.status_tasks import status_task
from bench.loadgen import BenchGateway, post_all, report
from fhir_profiles.identifiers import NHS_NUMBER_SYSTEM
from gateway.store.db import normalise_url

PROVIDER, TRUST = "HC001", "RBA"
SEARCHED_STATUSES = ("accepted", "in-preparation", "dispensed", "delivery-scheduled", "delivered")


def timed(count: int, call: Callable[[int], httpx.Response]) -> dict[str, float]:
    """Run `call` `count` times one after another: requests/s and p50/p99 in ms."""
    latencies = []
    started = time.perf_counter()
    for index in range(count):
        before = time.perf_counter()
        response = call(index)
        latencies.append(time.perf_counter() - before)
        if response.status_code != 200:
            raise RuntimeError(f"search answered {response.status_code}: {response.text[:300]}")
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return {"rps": count / elapsed, "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000}


def reports(items: list[tuple[str, str, str]], status: str) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        status_task(
            task_id=str(uuid.uuid4()),
            short_form_id=short_form,
            item_id=item_identifier,
            nhs_number=nhs_number,
            provider_ods=PROVIDER,
            status=status,
            last_modified=now,
        )
        for short_form, item_identifier, nhs_number in items
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="the database scripts/seed_status.py filled")
    parser.add_argument("--searches", type=int, default=1000, help="requests per kind of search")
    parser.add_argument("--updates", type=int, default=4000, help="items to report on")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    arguments = parser.parse_args()

    engine = create_engine(normalise_url(arguments.database_url))
    with engine.connect() as connection:
        prescriptions = connection.execute(text("SELECT count(*) FROM prescription")).scalar_one()
        events = connection.execute(text("SELECT count(*) FROM status_event")).scalar_one()
        patients = [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT nhs_number FROM prescription WHERE tenant_ods = :trust ORDER BY random() LIMIT :n"
                ),
                {"trust": TRUST, "n": arguments.searches},
            )
        ]
        accepted = [
            (row[0], row[1], row[2])
            for row in connection.execute(
                text(
                    "SELECT p.short_form_id, i.item_identifier, p.nhs_number FROM prescription_item i "
                    "JOIN prescription p ON p.id = i.prescription_id "
                    "WHERE i.provider_ods = :provider AND i.status = 'accepted' ORDER BY random() LIMIT :n"
                ),
                {"provider": PROVIDER, "n": arguments.updates},
            )
        ]
    engine.dispose()
    if not patients or len(accepted) < 50:
        sys.exit("the database holds too few prescriptions: run scripts/seed_status.py first")
    print(
        f"{prescriptions:,} prescriptions, {events:,} status events; {arguments.workers} uvicorn "
        f"workers, {os.cpu_count()} cores"
    )

    suffix = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as temporary:
        gateway = BenchGateway(
            Path(temporary),
            workers=arguments.workers,
            client_id=f"bench-trust-{suffix}",
            ods=TRUST,
            scopes="system/Task.rs",
            database_url=arguments.database_url,
            extra_env={"HOMECARE_RUN_DISPATCHER": "false"},
        )
        provider = gateway.add_client(
            f"bench-provider-{suffix}", role="provider", ods=PROVIDER, scopes="system/Task.rs system/Task.cu"
        )
        with gateway:
            base = f"http://127.0.0.1:{gateway.port}"
            provider_token, trust_token = provider.access_token(), gateway.access_token()
            as_provider = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {provider_token}"})
            as_trust = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {trust_token}"})

            def by_owner(index: int) -> httpx.Response:
                status = SEARCHED_STATUSES[index % len(SEARCHED_STATUSES)]
                return as_provider.get(
                    "/fhir/Task", params={"owner": PROVIDER, "business-status": status, "_count": "20"}
                )

            next_pages = [
                link["url"]
                for index in range(len(SEARCHED_STATUSES))
                for link in by_owner(index).json()["link"]
                if link["relation"] == "next"
            ]

            def next_page(index: int) -> httpx.Response:
                return as_provider.get(next_pages[index % len(next_pages)])

            def by_patient(index: int) -> httpx.Response:
                return as_trust.post(
                    "/fhir/Task/_search",
                    data={"patient:identifier": f"{NHS_NUMBER_SYSTEM}|{patients[index % len(patients)]}"},
                )

            timed(100, by_owner)  # warm-up
            report("Task?owner&business-status", timed(arguments.searches, by_owner))
            report("  its next page (keyset)", timed(arguments.searches, next_page))
            report("Task/_search by patient", timed(arguments.searches, by_patient))

            headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {provider_token}"}
            single = [orjson.dumps(task) for task in reports(accepted, "in-preparation")]
            report(
                "status update, one Task a request",
                post_all(gateway.port, "/fhir/Task", single, concurrency=8, headers=headers),
            )
            tasks = reports(accepted, "dispensed")
            bundles = [
                orjson.dumps(
                    {
                        "resourceType": "Bundle",
                        "type": "transaction",
                        "entry": [
                            {"resource": task, "request": {"method": "POST", "url": "Task"}}
                            for task in tasks[start : start + 50]
                        ],
                    }
                )
                for start in range(0, len(tasks) - len(tasks) % 50, 50)
            ]
            figures = post_all(gateway.port, "/fhir", bundles, concurrency=4, headers=headers)
            print(
                f"status updates in transactions of 50  {figures['rps'] * 50:8.0f} Tasks/s   "
                f"p50 {figures['p50_ms']:6.1f} ms   p99 {figures['p99_ms']:6.1f} ms a Bundle"
            )
            as_provider.close()
            as_trust.close()


if __name__ == "__main__":
    main()
