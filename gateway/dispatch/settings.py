"""How a dispatcher behaves: polling, leases, concurrency, retries, breakers and notifications."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.dispatch.policy import RetryPolicy


@dataclass(frozen=True, slots=True)
class DispatcherSettings:
    poll_seconds: float = 0.2
    lease_seconds: float = 60.0
    max_in_flight: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    notification_timeout_seconds: float = 10.0
    # Failed deliveries in a row after which a subscription goes into `error`.
    subscription_error_after: int = 5
    # Subscriber endpoints on loopback may be posted to (development only; see gateway.notify.endpoints).
    allow_loopback_subscribers: bool = False
