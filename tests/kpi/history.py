"""Hand-built event histories for the KPI tests: the events the gateway records, in the shapes it
records them (the gateway's own steps once per prescription, reports per line item)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.store.kpi import EventRecord

_ids = itertools.count(1)


def at(text: str) -> datetime:
    """`2026-02-03 10:00` (UTC) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class History:
    """One prescription's events, in the order they were recorded (ids increase)."""

    prescription_id: str = "p1"
    provider: str = "VNCEL"
    trust: str = "RBA"
    events: list[EventRecord] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: _ids)

    def _add(
        self,
        *,
        item: str | None,
        status: str,
        when: datetime,
        source: str,
        verdict: str | None,
        recorded: datetime | None,
        detail: dict[str, Any],
    ) -> History:
        self.events.append(
            EventRecord(
                id=next(self.ids),
                prescription_id=self.prescription_id,
                item_id=item,
                tenant_ods=self.trust,
                provider_ods=self.provider,
                status=status,
                occurred_at=when,
                recorded_at=recorded or when,
                source=source,
                verdict=verdict,
                detail=detail,
            )
        )
        return self

    def gateway(
        self, status: str, when: datetime, *, recorded: datetime | None = None, **detail: Any
    ) -> History:
        """One of the gateway's own steps, recorded for the whole prescription."""
        return self._add(
            item=None,
            status=status,
            when=when,
            source="gateway",
            verdict=None,
            recorded=recorded,
            detail=detail,
        )

    def order(
        self, when: datetime, *, items: int = 1, sent_after: timedelta | None = timedelta(minutes=1)
    ) -> History:
        """Intake (received, queued) and, unless `sent_after` is None, the provider's system taking it."""
        self.gateway("received", when, items=items)
        self.gateway("queued", when, provider=self.provider)
        if sent_after is not None:
            self.gateway("sent", when + sent_after, provider=self.provider, attempts=1)
        return self

    def report(
        self,
        item: str,
        status: str,
        when: datetime,
        *,
        recorded: datetime | None = None,
        verdict: str = "applied",
        source: str | None = None,
        **detail: Any,
    ) -> History:
        """A report about one line item (the provider's, unless `source` says otherwise)."""
        return self._add(
            item=item,
            status=status,
            when=when,
            source=source or f"provider:{self.provider}",
            verdict=verdict,
            recorded=recorded,
            detail=detail,
        )

    def direct(
        self, item: str, status: str, when: datetime, *, source: str | None = None, **detail: Any
    ) -> History:
        """A move on the order's way to the provider, recorded for one item outside its history of
        reports (no verdict): the trust cancelling before it went, or the gateway's own steps."""
        return self._add(
            item=item,
            status=status,
            when=when,
            source=source or f"trust:{self.trust}",
            verdict=None,
            recorded=None,
            detail=detail,
        )

    def delivered_path(
        self, item: str, start: datetime, *, window_end: str | None, delivered: datetime
    ) -> History:
        """accepted, dispensed, delivery-scheduled (with a window ending `window_end`), delivered."""
        self.report(item, "accepted", start)
        self.report(item, "dispensed", start + timedelta(hours=1))
        window = {"delivery_window": {"start": window_end, "end": window_end}} if window_end else {}
        self.report(item, "delivery-scheduled", start + timedelta(hours=2), **window)
        return self.report(item, "delivered", delivered)


def window(end: str) -> dict[str, Any]:
    return {"delivery_window": {"end": end}}
