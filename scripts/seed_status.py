"""Seed a PostgreSQL database with many prescriptions, their line items and status events.

    python scripts/seed_status.py --database-url URL [--prescriptions 1000000] [--providers 8]
                                  [--trusts 40] [--patients 300000] [--seed 1]

For `bench/status.py`. It migrates the database, registers the providers (HC001, HC002, ...;
`fhir-rest` pointing at a closed port, as nothing is sent) and loads the rows with COPY:
prescriptions from `--trusts` trusts (RBA first) for `--patients` synthetic patients (NHS numbers in
the 9xx test range; each patient's prescriptions come from one trust), one or two line items each,
every item somewhere in its life (most delivered, the rest spread over every other status) with
the events that led there, in order and in the past. Each prescription's message is a small
placeholder, not a full Bundle: status searches never read it. Give a throw-away database or
schema (e.g. `?options=-csearch_path%3Dhomecare_bench`; the script creates the schema when it is
missing). It refuses a database that already holds prescriptions.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from fhir_profiles.identifiers import generate_nhs_number, generate_short_form_id
from gateway.domain.status import GATEWAY_SOURCE, Status, prescription_status, provider_source
from gateway.store.db import Database
from gateway.store.providers import add_provider

S = Status

# Where items are, and the path that took each there (gateway-made steps first).
PATHS: dict[Status, tuple[Status, ...]] = {
    S.QUEUED: (S.RECEIVED, S.QUEUED),
    S.UNDELIVERABLE: (S.RECEIVED, S.QUEUED, S.UNDELIVERABLE),
    S.SENT: (S.RECEIVED, S.QUEUED, S.SENT),
    S.REJECTED: (S.RECEIVED, S.QUEUED, S.SENT, S.REJECTED),
    S.ACCEPTED: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED),
    S.QUERY: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.QUERY),
    S.CANCEL_REQUESTED: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.CANCEL_REQUESTED),
    S.CANCELLED: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.CANCEL_REQUESTED, S.CANCELLED),
    S.EXPIRED: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.EXPIRED),
    S.IN_PREPARATION: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.IN_PREPARATION),
    S.DISPENSED: (S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.IN_PREPARATION, S.DISPENSED),
    S.DELIVERY_SCHEDULED: (
        *(S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.IN_PREPARATION, S.DISPENSED),
        S.DELIVERY_SCHEDULED,
    ),
    S.OUT_FOR_DELIVERY: (
        *(S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.IN_PREPARATION, S.DISPENSED),
        *(S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY),
    ),
    S.DELIVERY_FAILED: (
        *(S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.IN_PREPARATION, S.DISPENSED),
        *(S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY, S.DELIVERY_FAILED),
    ),
    S.DELIVERED: (
        *(S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.IN_PREPARATION, S.DISPENSED),
        *(S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY, S.DELIVERED),
    ),
}
WEIGHTS: dict[Status, float] = {
    S.DELIVERED: 55,
    S.ACCEPTED: 8,
    S.IN_PREPARATION: 6,
    S.DELIVERY_SCHEDULED: 6,
    S.DISPENSED: 4,
    S.CANCELLED: 4,
    S.OUT_FOR_DELIVERY: 3,
    S.REJECTED: 3,
    S.EXPIRED: 3,
    S.SENT: 2,
    S.QUERY: 2,
    S.DELIVERY_FAILED: 2,
    S.QUEUED: 1,
    S.CANCEL_REQUESTED: 0.5,
    S.UNDELIVERABLE: 0.5,
}
# Statuses the gateway records itself; the rest come from the provider.
GATEWAY_MADE = frozenset({S.RECEIVED, S.QUEUED, S.SENT, S.UNDELIVERABLE, S.CANCEL_REQUESTED, S.EXPIRED})

PRESCRIPTION_COLUMNS = (
    "id, tenant_ods, short_form_id, long_form_id, provider_ods, nhs_number, prescription_type, "
    "message_id, status, partial, valid_until, created_at, updated_at"
)
MESSAGE_COLUMNS = (
    "id, tenant_ods, bundle_identifier, event, body_sha256, body, response_status, response_body, "
    "response_location, request_id, received_at"
)
ITEM_COLUMNS = (
    "id, prescription_id, tenant_ods, provider_ods, position, item_identifier, resource, status, "
    "resume_status, last_modified, version, updated_at"
)
EVENT_COLUMNS = "prescription_id, item_id, status, occurred_at, recorded_at, source, verdict"


class Rows:
    """The rows of one batch of prescriptions, table by table."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.prescriptions: list[tuple[Any, ...]] = []
        self.items: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []


class Seeder:
    def __init__(self, arguments: argparse.Namespace) -> None:
        self.rng = random.Random(arguments.seed)
        self.trusts = ["RBA", *(f"R{index:03d}" for index in range(1, arguments.trusts))]
        self.providers = [f"HC{index:03d}" for index in range(1, arguments.providers + 1)]
        self.patients = [generate_nhs_number(self.rng) for _ in range(arguments.patients)]
        self.statuses = list(WEIGHTS)
        self.weights = list(WEIGHTS.values())
        self.short_forms: set[str] = set()
        self.now = datetime.now(UTC)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _short_form(self, trust: str) -> str:
        while True:
            short_form = generate_short_form_id(trust, self.rng)
            if short_form not in self.short_forms:
                self.short_forms.add(short_form)
                return short_form

    def batch(self, count: int) -> Rows:
        rows = Rows()
        for _ in range(count):
            self._prescription(rows)
        return rows

    def _prescription(self, rows: Rows) -> None:
        rng = self.rng
        patient = rng.randrange(len(self.patients))
        trust = self.trusts[patient % len(self.trusts)]  # a patient's prescriptions come from one trust
        provider = rng.choice(self.providers)
        prescription_id, message_id = self._uuid(), self._uuid()
        short_form = self._short_form(trust)
        created = self.now - timedelta(days=rng.uniform(20, 365))  # every step is in the past
        body = f'{{"resourceType":"Bundle","id":"{message_id}","note":"seeded placeholder"}}'.encode()
        rows.messages.append(
            (
                *(message_id, trust, self._uuid(), "prescription-order"),
                *(hashlib.sha256(body).hexdigest(), body, 200, b"{}"),
                *(f"MedicationRequest?group-identifier={short_form}", self._uuid(), created),
            )
        )
        statuses = []
        updated = created
        for position in range(1 if rng.random() < 0.7 else 2):
            status = rng.choices(self.statuses, self.weights)[0]
            statuses.append(status)
            item_id = self._uuid()
            moment = created
            for step in PATHS[status]:
                source = GATEWAY_SOURCE if step in GATEWAY_MADE else provider_source(provider)
                rows.events.append((prescription_id, item_id, step.value, moment, moment, source, "applied"))
                last = moment
                moment += timedelta(minutes=rng.uniform(1, 2880))
            from_provider = PATHS[status][-1] not in GATEWAY_MADE
            resume = S.ACCEPTED.value if status in (S.QUERY, S.CANCEL_REQUESTED) else None
            resource = f'{{"resourceType":"MedicationRequest","id":"{item_id}"}}'.encode()
            rows.items.append(
                (
                    *(item_id, prescription_id, trust, provider, position, self._uuid(), resource),
                    *(status.value, resume, last if from_provider else None, len(PATHS[status]), last),
                )
            )
            updated = max(updated, last)
        derived = prescription_status(statuses)
        rows.prescriptions.append(
            (
                *(prescription_id, trust, short_form, self._uuid(), provider, self.patients[patient]),
                *("1201", message_id, derived.status.value, derived.partial),
                *(created + timedelta(days=180), created, updated),
            )
        )


def copy(connection: Any, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copying:
        for row in rows:
            copying.write_row(row)


def batches(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL database or schema to fill")
    parser.add_argument("--prescriptions", type=int, default=1_000_000)
    parser.add_argument("--providers", type=int, default=8)
    parser.add_argument("--trusts", type=int, default=40)
    parser.add_argument("--patients", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()

    db = Database(arguments.database_url, pool_size=2)
    if db.is_sqlite:
        sys.exit("give a PostgreSQL URL: the status benchmark measures the scaling database")
    options = parse_qs(urlsplit(arguments.database_url).query).get("options", [""])[0]
    if options.startswith("-csearch_path="):
        schema = options.removeprefix("-csearch_path=").split(",")[0]
        with db.write_connection() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    db.migrate()
    with db.write_connection() as connection:
        if connection.execute(text("SELECT count(*) FROM prescription")).scalar_one():
            sys.exit("this database already holds prescriptions; give an empty one")
    seeder = Seeder(arguments)
    with db.write() as session:
        for ods in seeder.providers:
            add_provider(
                session,
                ods_code=ods,
                name=f"Seeded provider {ods}",
                adapter="fhir-rest",
                settings={"base_url": "http://127.0.0.1:9/fhir"},
                now=seeder.now,
            )
    started = time.perf_counter()
    done = events = 0
    for size in batches(arguments.prescriptions, 20_000):
        rows = seeder.batch(size)
        with db.write_connection() as connection:
            raw = connection.connection.driver_connection
            copy(raw, "inbound_message", MESSAGE_COLUMNS, rows.messages)
            copy(raw, "prescription", PRESCRIPTION_COLUMNS, rows.prescriptions)
            copy(raw, "prescription_item", ITEM_COLUMNS, rows.items)
            copy(raw, "status_event", EVENT_COLUMNS, rows.events)
        done += size
        events += len(rows.events)
        print(f"\r{done:,} prescriptions, {events:,} events", end="", flush=True)
    with db.write_connection() as connection:
        connection.execute(text("ANALYZE"))
    print(f"\nseeded in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
