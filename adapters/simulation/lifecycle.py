"""The homecare lifecycle every provider simulator plays out for each accepted order, its knobs, and the
time it runs on. Shared by the simulators of all adapters, so each protocol's provider behaves alike.

An order's path is planned up front from a random generator seeded with the simulator's seed and
the prescription ID, so the same seed gives every order the same path, whatever order requests
arrive in:

    accepted → [query → accepted] → in-preparation → dispensed →
        (delivery-scheduled → out-for-delivery → delivered | delivery-failed → ...)

Items are reviewed one by one (each may be rejected or queried); the items still live are then
dispensed and delivered together, one report per item per step.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fhir_profiles.status_task import PROVIDER_STATUSES


@dataclass(frozen=True, slots=True)
class Reason:
    """A coded reason for a status; `party` says who caused it (patient, trust, provider, courier)."""

    code: str
    display: str
    party: str | None = None


class LifecycleSettings(BaseModel):
    """The knobs every provider simulator shares: the seed, refusals at intake and the lifecycle of
    accepted orders. Each simulator's config adds its transport's knobs. Lifecycle settings apply to
    orders accepted afterwards (an order's path is planned when it is accepted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ods: str = Field(default="VNCEL", pattern=r"^[A-Z0-9]{3,12}$", description="The provider's ODS code")
    seed: int = Field(default=0, description="Seed of every random choice, so runs repeat")
    reject_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of new orders refused at once (with a reason)"
    )
    lifecycle: bool = Field(default=True, description="Move accepted orders through the lifecycle")
    step_delay_seconds: float = Field(default=2.0, ge=0, description="Wait before each status change")
    step_delays: dict[str, float] = Field(
        default_factory=dict, description="Per-status waits overriding step_delay_seconds"
    )
    lifecycle_reject_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of items rejected after review"
    )
    query_rate: float = Field(default=0.0, ge=0, le=1, description="Share of accepted items queried")
    query_answer_seconds: float | None = Field(
        default=None,
        ge=0,
        description="How long a raised query stays open before the provider carries on as if answered "
        "(default: the accepted step's delay); the demo keeps queries open for a person to answer",
    )
    delivery_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="Chance that a delivery attempt fails"
    )
    max_delivery_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("step_delays")
    @classmethod
    def _known_statuses(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - PROVIDER_STATUSES)
        if unknown:
            raise ValueError(f"unknown statuses {unknown}; choose from {sorted(PROVIDER_STATUSES)}")
        if any(delay < 0 for delay in value.values()):
            raise ValueError("delays cannot be negative")
        return value

    def delay_for(self, status: str) -> float:
        return self.step_delays.get(status, self.step_delay_seconds)

    def updated(self, changes: dict[str, Any]) -> Self:
        """A validated copy with `changes` applied."""
        return type(self).model_validate({**dict(self), **changes})


# Refusals at intake (the order is answered 422 with one of these).
INTAKE_REJECTIONS = (
    Reason("out-of-stock", "Out of stock: the medicine cannot be supplied at present", "provider"),
    Reason("patient-not-registered", "Patient not registered with this provider", "trust"),
    Reason("service-not-commissioned", "This provider is not commissioned to supply this service", "trust"),
)
# Rejections after clinical and commercial review of an accepted order, per item.
REVIEW_REJECTIONS = (
    Reason("out-of-stock", "Out of stock: the medicine cannot be supplied at present", "provider"),
    Reason("clinical-check-failed", "Clinical check failed: the prescriber must review", "trust"),
    Reason("patient-declined-service", "Patient declined the homecare service", "patient"),
)
QUERIES = (
    Reason("dose-clarification", "Dose or frequency needs clarification by the prescriber", "trust"),
    Reason("registration-incomplete", "Patient registration form not received", "trust"),
    Reason("blood-results-needed", "Recent blood results are needed before supply", "trust"),
)
DELIVERY_FAILURES = (
    Reason("patient-not-in", "Patient not at home during the delivery window", "patient"),
    Reason("wrong-address", "Delivery address incomplete or wrong", "trust"),
    Reason("patient-refused", "Patient refused the delivery", "patient"),
    Reason("provider-stock", "Stock not available at the provider on the delivery day", "provider"),
    Reason("courier-failure", "Courier did not complete the delivery route", "courier"),
    Reason("cold-chain-breach", "Cold chain broken in transit; delivery withdrawn", "courier"),
)
WRONG_PROVIDER = Reason("wrong-provider", "The order is addressed to another homecare provider")
UNKNOWN_PRESCRIPTION = Reason("unknown-prescription", "No order with this prescription ID has been received")
TOO_LATE_TO_CANCEL = Reason("too-late-to-cancel", "Too late to cancel: the medicine has been dispensed")

# Delivery windows offered to patients (hours, local clock).
_DELIVERY_SLOTS = ((8, 12), (12, 17), (17, 21))


class SimulationTime(Protocol):
    """The simulator's clock for the lifecycle: `now` stamps reports, `sleep` waits between steps."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class RealTime:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualTime:
    """Time that passes only when the lifecycle waits: hours of lifecycle in milliseconds."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class Step:
    """One status change for some items, `delay_seconds` after the previous step."""

    status: str
    items: tuple[str, ...]
    delay_seconds: float
    reason: Reason | None = None
    attempt: int | None = None
    window_days_ahead: int | None = None
    window_hours: tuple[int, int] | None = None


def order_random(seed: int, purpose: str, short_form_id: str) -> random.Random:
    """The random generator for one decision about one prescription."""
    return random.Random(f"{seed}/{purpose}/{short_form_id}")


def plan_lifecycle(config: LifecycleSettings, short_form_id: str, items: tuple[str, ...]) -> list[Step]:
    rng = order_random(config.seed, "lifecycle", short_form_id)
    steps: list[Step] = []
    live: list[str] = []
    queried: list[tuple[str, Reason]] = []
    rejected: list[tuple[str, Reason]] = []
    for item in items:
        if rng.random() < config.lifecycle_reject_rate:
            rejected.append((item, rng.choice(REVIEW_REJECTIONS)))
            continue
        live.append(item)
        if rng.random() < config.query_rate:
            queried.append((item, rng.choice(QUERIES)))

    delay = config.delay_for
    if live:
        steps.append(Step("accepted", tuple(live), delay("accepted")))
    for item, reason in rejected:
        steps.append(Step("rejected", (item,), 0.0 if steps else delay("rejected"), reason))
    for item, reason in queried:
        steps.append(Step("query", (item,), delay("query"), reason))
        # The trust answers; the item goes back to the status the query interrupted.
        answered_after = config.query_answer_seconds
        steps.append(
            Step("accepted", (item,), delay("accepted") if answered_after is None else answered_after)
        )
    if not live:
        return steps

    steps.append(Step("in-preparation", tuple(live), delay("in-preparation")))
    steps.append(Step("dispensed", tuple(live), delay("dispensed")))
    for attempt in range(1, config.max_delivery_attempts + 1):
        steps.append(
            Step(
                "delivery-scheduled",
                tuple(live),
                delay("delivery-scheduled"),
                attempt=attempt,
                window_days_ahead=rng.randint(1, 3),
                window_hours=rng.choice(_DELIVERY_SLOTS),
            )
        )
        steps.append(Step("out-for-delivery", tuple(live), delay("out-for-delivery"), attempt=attempt))
        if rng.random() < config.delivery_failure_rate:
            failure = rng.choice(DELIVERY_FAILURES)
            steps.append(Step("delivery-failed", tuple(live), delay("delivery-failed"), failure, attempt))
            continue
        steps.append(Step("delivered", tuple(live), delay("delivered"), attempt=attempt))
        break
    return steps
