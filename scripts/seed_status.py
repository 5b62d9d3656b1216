"""Seed a PostgreSQL database with many prescriptions, their line items and status events.

    python scripts/seed_status.py --database-url URL [--prescriptions 1000000] [--providers 8]
                                  [--trusts 40] [--patients 300000] [--seed 1]

For `bench/status.py`. It migrates the database, registers the providers (HC001, HC002, ...;
`fhir-rest` pointing at a closed port, as nothing is sent) and loads the rows with COPY:
prescriptions from `--trusts` trusts (RBA first) for `--patients` synthetic patients (NHS numbers in
the 9xx test range; each patient's prescriptions come from one trust), one or two line items each,
every item somewhere in its life (most delivered, the rest spread over every other status) with
the events that led there, in order and in the past, as the gateway records them: its own steps
(received, queued, sent, undeliverable) once per prescription, the provider's and the trust's
reports per item, with delivery windows, failed attempts and rejections with their causes, queries
and their answers, cancellations, a few repeated reports and a few recorded weeks late. Providers
differ (HC001 the best, the last the worst) in how fast they accept, how often they query, fail a
delivery or miss the agreed date, so the KPIs (`bench/kpi.py`) have something to show. Each
prescription's message is a small placeholder, not a full Bundle: status searches never read it.
Give a throw-away database or schema (e.g. `?options=-csearch_path%3Dhomecare_bench`; the script
creates the schema when it is missing). It refuses a database that already holds prescriptions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
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
EVENT_COLUMNS = "prescription_id, item_id, status, occurred_at, recorded_at, source, detail, verdict"
GATEWAY_STEPS = (S.RECEIVED, S.QUEUED, S.SENT, S.UNDELIVERABLE)
NOT_AT_PROVIDER = (S.QUEUED, S.UNDELIVERABLE)
FAILURE_CAUSES = (
    ("patient-not-home", "patient"),
    ("address-not-found", "courier"),
    ("vehicle-breakdown", "courier"),
    ("stock-not-ready", "provider"),
    ("wrong-address-on-order", "trust"),
)
REJECTION_REASONS = (
    "out-of-stock",
    "not-registered-with-provider",
    "clinical-check-failed",
    "duplicate-order",
)


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
        first = rng.choices(self.statuses, self.weights)[0]
        targets = [first]
        if rng.random() >= 0.7:  # a second item: where the order never reached the provider, both wait
            at_provider = [s for s in self.statuses if s not in NOT_AT_PROVIDER]
            weights = [WEIGHTS[s] for s in at_provider]
            targets.append(first if first in NOT_AT_PROVIDER else rng.choices(at_provider, weights)[0])
        sent = created + timedelta(minutes=rng.uniform(0.05, 10))
        events = Events(rows, prescription_id, self.now)
        events.add(None, S.RECEIVED, created, GATEWAY_SOURCE, {"items": len(targets)}, verdict=None)
        events.add(None, S.QUEUED, created, GATEWAY_SOURCE, {"provider": provider}, verdict=None)
        if first is S.UNDELIVERABLE:
            events.add(None, S.UNDELIVERABLE, created + timedelta(hours=6), GATEWAY_SOURCE, {}, verdict=None)
        elif first is not S.QUEUED:
            events.add(
                None, S.SENT, sent, GATEWAY_SOURCE, {"provider": provider, "attempts": 1}, verdict=None
            )
        profile = Profile.of(self.providers.index(provider), len(self.providers))
        statuses = []
        updated = sent
        for position, target in enumerate(targets):
            statuses.append(target)
            item_id = self._uuid()
            walk = ItemWalk(rng, events, item_id, provider, trust, profile)
            last, count = walk.to(target, sent) if target not in NOT_AT_PROVIDER else (None, 0)
            resume = S.ACCEPTED.value if target in (S.QUERY, S.CANCEL_REQUESTED) else None
            resource = f'{{"resourceType":"MedicationRequest","id":"{item_id}"}}'.encode()
            rows.items.append(
                (
                    *(item_id, prescription_id, trust, provider, position, self._uuid(), resource),
                    *(target.value, resume, last, count + 1, last or created),
                )
            )
            updated = max(updated, last or created)
        derived = prescription_status(statuses)
        rows.prescriptions.append(
            (
                *(prescription_id, trust, short_form, self._uuid(), provider, self.patients[patient]),
                *("1201", message_id, derived.status.value, derived.partial),
                *(created + timedelta(days=180), created, updated),
            )
        )


class Events:
    """One prescription's events: recorded when they happened, a few weeks late, or twice."""

    def __init__(self, rows: Rows, prescription_id: str, now: datetime) -> None:
        self.rows = rows
        self.prescription_id = prescription_id
        self.now = now

    def add(
        self,
        item_id: str | None,
        status: Status,
        moment: datetime,
        source: str,
        detail: dict[str, Any],
        *,
        verdict: str | None = "applied",
        late: timedelta = timedelta(0),
    ) -> None:
        recorded = min(self.now, moment + timedelta(seconds=1) + late)
        text = json.dumps(detail) if detail else None
        self.rows.events.append(
            (self.prescription_id, item_id, status.value, moment, recorded, source, text, verdict)
        )


class Profile:
    """How one seeded provider behaves: the first is the best, the last the worst."""

    def __init__(self, badness: float) -> None:
        self.accept_minutes = 30 + 600 * badness
        self.query_rate = 0.03 + 0.12 * badness
        self.failure_rate = 0.02 + 0.10 * badness
        self.late_rate = 0.03 + 0.20 * badness

    @classmethod
    def of(cls, index: int, count: int) -> Profile:
        return cls(index / max(1, count - 1))


class ItemWalk:
    """The reports that take one line item from `sent` to its target status."""

    def __init__(
        self, rng: random.Random, events: Events, item_id: str, provider: str, trust: str, profile: Profile
    ) -> None:
        self.rng, self.events, self.item_id, self.profile = rng, events, item_id, profile
        self.provider, self.trust = provider_source(provider), f"trust:{trust}"
        self.count = 0

    def report(self, status: Status, moment: datetime, source: str | None = None, **detail: Any) -> None:
        late = timedelta(days=self.rng.uniform(2, 30)) if self.rng.random() < 0.02 else timedelta(0)
        self.events.add(self.item_id, status, moment, source or self.provider, detail, late=late)
        self.count += 1
        if self.rng.random() < 0.01:  # the provider's system sent it again
            self.events.add(
                self.item_id, status, moment, source or self.provider, detail, verdict="duplicate"
            )

    def to(self, target: Status, sent: datetime) -> tuple[datetime, int]:
        """Walk PATHS[target] after `sent`, with queries, failed attempts and windows on the way."""
        rng, moment = self.rng, sent
        steps = [step for step in PATHS[target] if step not in GATEWAY_STEPS]
        for index, step in enumerate(steps):
            final = index == len(steps) - 1
            if step is S.ACCEPTED:
                moment += timedelta(minutes=rng.expovariate(1 / self.profile.accept_minutes))
                self.report(S.ACCEPTED, moment)
                if not final and rng.random() < self.profile.query_rate:
                    moment = self._query(moment)
            elif step is S.DELIVERY_SCHEDULED:
                moment = self._deliver(moment, target)
                break
            else:
                moment += timedelta(minutes=rng.uniform(5, 2880))
                detail: dict[str, Any] = {}
                if step is S.REJECTED:
                    detail = {"reason": {"code": rng.choice(REJECTION_REASONS), "text": None}}
                source = (
                    self.trust
                    if step is S.CANCEL_REQUESTED
                    else (GATEWAY_SOURCE if step is S.EXPIRED else None)
                )
                self.report(step, moment, source, **detail)
        return moment, self.count

    def _query(self, moment: datetime) -> datetime:
        moment += timedelta(minutes=self.rng.uniform(10, 600))
        self.report(S.QUERY, moment, note="Please confirm the dose")
        moment += timedelta(minutes=self.rng.expovariate(1 / 480))
        self.report(S.ACCEPTED, moment, self.trust, query_answered="seeded")
        return moment

    def _deliver(self, moment: datetime, target: Status) -> datetime:
        """Scheduled (with a window), then out for delivery, failed or delivered, as far as `target`."""
        rng = self.rng
        moment += timedelta(minutes=rng.uniform(30, 600))
        day = (moment + timedelta(days=rng.randint(1, 4))).date()
        self.report(S.DELIVERY_SCHEDULED, moment, delivery_window=_window(day))
        if target is S.DELIVERY_SCHEDULED:
            return moment
        failures = 1 if target is S.DELIVERY_FAILED else int(rng.random() < self.profile.failure_rate)
        for attempt in range(failures + 1):
            moment = datetime(day.year, day.month, day.day, 7, tzinfo=UTC) + timedelta(
                minutes=rng.uniform(0, 60)
            )
            if attempt == failures and rng.random() < self.profile.late_rate:
                moment += timedelta(days=rng.randint(1, 3))
            self.report(S.OUT_FOR_DELIVERY, moment)
            if target is S.OUT_FOR_DELIVERY:
                return moment
            moment += timedelta(minutes=rng.uniform(30, 480))
            if attempt < failures:
                cause, party = rng.choice(FAILURE_CAUSES)
                self.report(
                    S.DELIVERY_FAILED, moment, reason={"code": cause, "text": None}, responsible_party=party
                )
                if target is S.DELIVERY_FAILED:
                    return moment
                day = (moment + timedelta(days=rng.randint(1, 3))).date()
                moment += timedelta(minutes=30)
                self.report(S.DELIVERY_SCHEDULED, moment, delivery_window=_window(day))
            else:
                self.report(S.DELIVERED, moment)
        return moment


def _window(day: date) -> dict[str, str]:
    return {"start": f"{day.isoformat()}T08:00:00+00:00", "end": f"{day.isoformat()}T18:00:00+00:00"}


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
            # In the order the gateway would have recorded them.
            copy(raw, "status_event", EVENT_COLUMNS, sorted(rows.events, key=lambda event: event[4]))
        done += size
        events += len(rows.events)
        print(f"\r{done:,} prescriptions, {events:,} events", end="", flush=True)
    with db.write_connection() as connection:
        connection.execute(text("ANALYZE"))
    print(f"\nseeded in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
