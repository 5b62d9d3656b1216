"""The HTTP server's connection deadlines: slow or half-open connections are closed, not held.

uvicorn closes an idle keep-alive connection, but not one that opens and sends nothing, sends its
headers a byte at a time, or never finishes its body. This protocol (uvicorn's httptools protocol
with deadlines) closes a connection whose request headers are not complete within
`HOMECARE_HEADER_TIMEOUT_SECONDS` of it opening or of the request's first byte, and one whose body
is not complete within `HOMECARE_BODY_TIMEOUT_SECONDS` (plus a little grace: while the app waits
for the body, the request middleware answers 408 first). `HOMECARE_MAX_CONNECTIONS` caps open
connections; beyond it uvicorn answers 503.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.logs import get_logger
from gateway.settings import Settings

log = get_logger("gateway.transport")
# The backstop for a body the app never reads: after the middleware's own deadline has had its turn.
BODY_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Deadlines:
    header_seconds: float
    body_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Deadlines:
        return cls(settings.header_timeout_seconds, settings.body_timeout_seconds + BODY_GRACE_SECONDS)


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections that are too slow to send a request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def deadlines(self) -> Deadlines:
        """From the environment's settings, read once per process: uvicorn's worker processes
        (`serve --workers N`) import this class by name and build the app from the environment too."""
        return _environment_deadlines()

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("connection_closed_too_slow", phase=phase)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.deadlines().header_seconds, "headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.deadlines().header_seconds, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.deadlines().body_seconds, "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


@cache
def _environment_deadlines() -> Deadlines:
    return Deadlines.from_settings(Settings())


def protocol_with_deadlines(deadlines: Deadlines) -> type[DeadlineHttpProtocol]:
    """A protocol class with fixed deadlines, for a server run in this process (demo, tests)."""

    class FixedDeadlineHttpProtocol(DeadlineHttpProtocol):
        def deadlines(self) -> Deadlines:
            return deadlines

    return FixedDeadlineHttpProtocol


def uvicorn_options(settings: Settings, *, by_name: bool = False) -> dict[str, Any]:
    """uvicorn keyword arguments for the gateway's deadlines and connection cap. `by_name` names the
    protocol by its import path, for worker processes that read the same environment."""
    protocol: str | type[DeadlineHttpProtocol] = (
        f"{__name__}:{DeadlineHttpProtocol.__name__}"
        if by_name
        else protocol_with_deadlines(Deadlines.from_settings(settings))
    )
    return {"http": protocol, "limit_concurrency": settings.max_connections}
