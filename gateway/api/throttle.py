"""Rate limits: per client and per source address, on the token endpoint and on the API.

Counted in process memory with the `limits` library, in fixed windows (the cheapest of its
strategies, a few microseconds a request; across a window boundary a caller may get up to twice a
limit in a short time). Each server process counts for itself, so behind N processes
(`--workers N`, or N machines) a caller gets up to N times a limit. A limit is a `limits` string
("600/minute", "50/second", "10 per 2 seconds") or "none".
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from starlette.responses import JSONResponse, Response

from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.settings import Settings

# The OAuth error a throttled token request gets: RFC 6749's code for "the server cannot handle
# the request now, try later", which OAuth client libraries already treat as transient.
TOKEN_THROTTLED_ERROR = "temporarily_unavailable"  # noqa: S105  (an error code)


class _SweptMemoryStorage(MemoryStorage):
    """`limits`' in-process storage, its expired counters swept inline at most once a second.

    The library sweeps with a timer thread that runs 10 ms after a hit and ends, so under load it
    starts a new thread about a hundred times a second, and each one competes with the event loop
    for the interpreter. Counters read after their window are reset by the storage itself; the
    sweep only drops the counters of callers who stopped calling, so that memory stays bounded."""

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802  (the library's private name: replaces its timer thread)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


SWEEP_SECONDS = 1.0


class Limit:
    """One limit over keys (client ids or addresses); `hit` counts a request."""

    def __init__(self, spec: str | None, *, name: str, storage: MemoryStorage) -> None:
        self.item: RateLimitItem | None = parse(spec) if spec and spec.lower() != "none" else None
        self.name = name
        self._limiter = FixedWindowRateLimiter(storage)

    def hit(self, key: str) -> float | None:
        """Count a request for `key`; None when allowed, else the seconds to wait before retrying."""
        if self.item is None or self._limiter.hit(self.item, self.name, key):
            return None
        return self.retry_after(key)

    def exhausted(self, key: str) -> float | None:
        """Without counting: the seconds to wait when `key` has no request left, else None."""
        if self.item is None or self._limiter.test(self.item, self.name, key):
            return None
        return self.retry_after(key)

    def retry_after(self, key: str) -> float:
        assert self.item is not None
        stats = self._limiter.get_window_stats(self.item, self.name, key)
        # When the window resets; never more than one window, never less than a second.
        wait = min(stats.reset_time - time.time(), self.item.get_expiry())
        return max(1.0, wait)


class RateLimits:
    """Every limit the app applies, built from the settings."""

    def __init__(self, settings: Settings) -> None:
        # One store (its keys prefixed with each limit's name): one expiry timer thread, not four.
        storage = _SweptMemoryStorage()
        self.token_per_client = Limit(
            settings.rate_limit_token_per_client, name="token-client", storage=storage
        )
        self.token_per_address = Limit(
            settings.rate_limit_token_per_address, name="token-address", storage=storage
        )
        self.api_per_client = Limit(settings.rate_limit_api_per_client, name="api-client", storage=storage)
        self.api_per_address = Limit(settings.rate_limit_api_per_address, name="api-address", storage=storage)


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(math.ceil(seconds))}


def api_throttled(seconds: float, who: str) -> OperationOutcomeError:
    """The API's 429: an OperationOutcome (`throttled`) with Retry-After."""
    return OperationOutcomeError(
        429,
        [
            Issue(
                IssueType.THROTTLED,
                ErrorCode.TOO_MANY_REQUESTS,
                f"Too many requests from this {who}: retry after {math.ceil(seconds)} seconds",
            )
        ],
        headers=retry_after_header(seconds),
    )


def token_throttled(seconds: float, who: str) -> Response:
    """The token endpoint's 429: OAuth error JSON with Retry-After."""
    return JSONResponse(
        {
            "error": TOKEN_THROTTLED_ERROR,
            "error_description": f"too many token requests from this {who}: "
            f"retry after {math.ceil(seconds)} seconds",
        },
        status_code=429,
        headers={**retry_after_header(seconds), "Cache-Control": "no-store", "Pragma": "no-cache"},
    )
