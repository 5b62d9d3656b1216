"""Prometheus metrics. Counters are per process; the outbox figures are read from the database at
scrape time, so every process reports the same, whole-system values for them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.clock import Clock
from gateway.store.db import Database
from gateway.store.outbox import stats

REGISTRY = CollectorRegistry(auto_describe=True)

SENDS = Counter(
    "homecare_dispatch_sends",
    "Sends to providers by outcome (delivered, rejected, retry, dead)",
    ["provider", "outcome"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "homecare_notifications",
    "Notification attempts to subscribers by outcome (delivered, retry, dead, dropped)",
    ["outcome"],
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "homecare_dispatch_breaker_open",
    "1 while this process's circuit breaker for the provider is open",
    ["provider"],
    registry=REGISTRY,
)
INTAKE = Counter(
    "homecare_intake_messages",
    "Messages received on $process-message by HTTP status",
    ["status"],
    registry=REGISTRY,
)


class OutboxCollector(Collector):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = stats(self._db, now=self._clock())
        yield GaugeMetricFamily(
            "homecare_outbox_depth", "Messages waiting to be sent or being sent", figures.depth
        )
        yield GaugeMetricFamily("homecare_outbox_due", "Messages due to be sent now", figures.due)
        yield GaugeMetricFamily(
            "homecare_outbox_oldest_due_age_seconds",
            "How long the oldest due message has been waiting",
            figures.oldest_due_age_seconds,
        )
        yield GaugeMetricFamily(
            "homecare_outbox_held", "Orders waiting for providers that pull them", figures.held
        )
        dead = GaugeMetricFamily(
            "homecare_outbox_dead",
            "Dead letters (undeliverable, waiting for a re-drive)",
            labels=["provider"],
        )
        for provider, count in sorted(figures.by_provider_dead.items()):
            dead.add_metric([provider], count)
        yield dead


def render_metrics(db: Database, clock: Clock) -> bytes:
    """The process's counters and the database's outbox figures, in the Prometheus text format."""
    outbox_registry = CollectorRegistry(auto_describe=False)
    outbox_registry.register(OutboxCollector(db, clock))
    return generate_latest(REGISTRY) + generate_latest(outbox_registry)
