"""Retry and circuit-breaker policy for sends to providers."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, up to a retry budget; then the message is dead."""

    base_seconds: float = 1.0
    cap_seconds: float = 300.0
    max_attempts: int = 12

    def next_delay(
        self, attempts: int, rng: random.Random, *, retry_after: float | None = None
    ) -> timedelta | None:
        """The wait before attempt `attempts + 1`, or None when the budget is spent."""
        if attempts >= self.max_attempts:
            return None
        ceiling = min(self.cap_seconds, self.base_seconds * (2 ** (attempts - 1)))
        delay = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_seconds))
        return timedelta(seconds=delay)


@dataclass(slots=True)
class CircuitBreaker:
    """Per-provider breaker: after `threshold` consecutive failures, stop sending for `cooldown`
    seconds, then let one batch through (half-open) to see whether the provider is back."""

    threshold: int = 5
    cooldown: float = 30.0
    _failures: dict[str, int] = field(default_factory=dict)
    _open_until: dict[str, float] = field(default_factory=dict)

    def state(self, provider: str, *, now: float | None = None) -> str:
        moment = time.monotonic() if now is None else now
        until = self._open_until.get(provider)
        if until is None:
            return "closed"
        return "open" if moment < until else "half-open"

    def open_providers(self, *, now: float | None = None) -> frozenset[str]:
        moment = time.monotonic() if now is None else now
        return frozenset(provider for provider, until in self._open_until.items() if moment < until)

    def record_success(self, provider: str) -> None:
        self._failures.pop(provider, None)
        self._open_until.pop(provider, None)

    def record_failure(self, provider: str, *, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        failures = self._failures.get(provider, 0) + 1
        self._failures[provider] = failures
        if failures >= self.threshold:
            self._open_until[provider] = moment + self.cooldown

    def providers(self) -> frozenset[str]:
        return frozenset(self._failures) | frozenset(self._open_until)
