"""Refused requests in the audit log (401 for a missing or invalid bearer token, 403 for a missing
scope, the token endpoint's OAuth refusals, 429, 5xx), without letting a flood of them grow it
without bound.

Requests alike, the same (client, or source address when no client is known; route template; status;
reason),
are coalesced per window of `window_seconds`: the first of a window is written at once (`count` 1),
the rest are counted in memory and written as one row (`count` N, the last one's time and request
id) when the window has closed. Keys per window are capped: beyond `max_keys`, requests are counted
under the key `source` `*` of their route, status and reason. So a window adds at most about
2 x (`max_keys` + routes x statuses x reasons) rows, whatever the flood. Counts are per process; a process
that stops writes what it holds (`drain(everything=True)`), one that is killed loses at most a window.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime

from auth.audit import Action, AuditRecord, Outcome
from gateway.clock import Clock
from gateway.store import audit
from gateway.store.db import Database

OVERFLOW_SOURCE = "*"
# The source address of the request being served (set by the request middleware), for refusals
# recorded where the address is not at hand (the token service, in a worker thread).
REQUEST_SOURCE: ContextVar[str | None] = ContextVar("request_source", default=None)


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused request, as much of it as the audit keeps: no URL, no query, no body."""

    status: int
    route: str
    client_id: str | None = None
    role: str | None = None
    ods_code: str | None = None
    source: str | None = None
    reason: str | None = None
    # What the request asked for, when that was known before it was refused (a scope refusal).
    action: Action = Action.REQUEST
    resource_type: str | None = None
    resource_id: str | None = None

    def key(self) -> tuple[str | None, ...]:
        # A known client is the key; the address only when there is none.
        who = self.client_id or f"@{self.source}"
        return (who, self.route, str(self.status), self.reason, self.action.value, self.resource_type)


@dataclass(slots=True)
class _Tally:
    window: int
    first: Refusal
    more: int = 0
    last_at: datetime | None = None
    last_request_id: str | None = None


def outcome_of(status: int) -> Outcome:
    if status == 429:
        return Outcome.THROTTLED
    if status >= 500:
        return Outcome.FAILED
    return Outcome.REFUSED


def _record(refusal: Refusal, *, at: datetime, request_id: str | None, count: int) -> AuditRecord:
    return AuditRecord(
        occurred_at=at,
        action=refusal.action,
        outcome=outcome_of(refusal.status),
        request_id=request_id,
        client_id=refusal.client_id,
        role=refusal.role,
        ods_code=refusal.ods_code,
        resource_type=refusal.resource_type,
        # A count stands for many requests: only the first's resource is named.
        resource_id=refusal.resource_id if count == 1 else None,
        status=refusal.status,
        reason=refusal.reason,
        count=count,
        source=None if refusal.client_id else refusal.source,
        route=refusal.route[:120],
    )


class RefusalLog:
    """The coalescing tally (thread-safe; cheap enough for the request path)."""

    def __init__(self, db: Database, clock: Clock, *, window_seconds: float, max_keys: int) -> None:
        self._db = db
        self._clock = clock
        self.window_seconds = window_seconds
        self._max_keys = max_keys
        self._tallies: dict[tuple[str | None, ...], _Tally] = {}
        self._closed: list[AuditRecord] = []
        self._lock = threading.Lock()

    def _window(self, at: datetime) -> int:
        return int(at.timestamp() // self.window_seconds)

    def note(self, refusal: Refusal, *, request_id: str | None) -> AuditRecord | None:
        """Count a refusal; the row to write now when it is the first of its kind in this window."""
        now = self._clock()
        window = self._window(now)
        with self._lock:
            key = refusal.key()
            if key not in self._tallies and len(self._tallies) >= self._max_keys:
                refusal = replace(refusal, client_id=None, role=None, ods_code=None, source=OVERFLOW_SOURCE)
                key = refusal.key()
            tally = self._tallies.get(key)
            if tally is not None and tally.window == window:
                tally.more += 1
                tally.last_at, tally.last_request_id = now, request_id
                return None
            if tally is not None:
                self._close(tally)
            self._tallies[key] = _Tally(window, refusal)
        return _record(refusal, at=now, request_id=request_id, count=1)

    def _close(self, tally: _Tally) -> None:
        if tally.more and tally.last_at is not None:
            self._closed.append(
                _record(tally.first, at=tally.last_at, request_id=tally.last_request_id, count=tally.more)
            )

    def drain(self, *, everything: bool = False) -> list[AuditRecord]:
        """The rows of windows that have closed (of every window, with `everything`)."""
        current = self._window(self._clock())
        with self._lock:
            for key, tally in list(self._tallies.items()):
                if everything or tally.window < current:
                    self._close(tally)
                    del self._tallies[key]
            closed, self._closed = self._closed, []
        return closed

    def record(self, refusal: Refusal, *, request_id: str | None) -> None:
        """Count a refusal, writing its row now when it is the first of its kind in this window."""
        first = self.note(refusal, request_id=request_id)
        if first is not None:
            self.write([first])

    def record_audit(self, entry: AuditRecord, *, route: str) -> None:
        """A refusal another part wrote as an audit record (the token service's), coalesced."""
        refusal = Refusal(
            status=entry.status or 0,
            route=route,
            client_id=entry.client_id,
            role=entry.role,
            ods_code=entry.ods_code,
            source=REQUEST_SOURCE.get(),
            reason=entry.reason,
            action=entry.action,
            resource_type=entry.resource_type,
            resource_id=entry.resource_id,
        )
        self.record(refusal, request_id=entry.request_id)

    def write(self, records: list[AuditRecord]) -> None:
        if records:
            with self._db.transaction() as tx:
                audit.record(tx, records)

    def flush(self, *, everything: bool = False) -> int:
        """Write the rows of closed windows; how many."""
        records = self.drain(everything=everything)
        self.write(records)
        return len(records)
