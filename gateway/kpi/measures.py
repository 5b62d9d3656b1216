"""The measures, computed from the event log: pure functions over event records, no SQL.

`prescription_figures(history)` turns one prescription's events into what it adds to each cell
(measure, provider, trust, month). A cell is the sum of what every prescription adds, so the
aggregate is kept up to date by adding the difference a prescription's new events make, and a
recompute from the whole log gives the same sums (`gateway.kpi.service`). The rules are the words
in `gateway.kpi.definitions`; `restatements(history)` says which months events recorded after
they closed belong to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from gateway.domain.status import ItemState, Status, StatusUpdate, Verdict, derive
from gateway.kpi.definitions import (
    CANCELLED_BEFORE_SENDING,
    CAUSE,
    DELIVERED_WITHOUT_AGREED_DATE,
    REASON,
    REFUSED_AT_SEND,
    RESPONSIBLE_PARTY,
    SUPPLEMENT,
    UNSPECIFIED,
    MeasureId,
)
from gateway.kpi.months import local_date, month_closes_at, month_of, month_of_date
from gateway.store.kpi import CellKey, EventRecord, Figures, MonthKey

S = Status
M = MeasureId
GATEWAY = "gateway"
# The gateway's own steps in getting an order to the provider. Today it records them once for the
# whole prescription (no item id); recorded per item by the gateway they mean the same.
GATEWAY_STEPS = frozenset({S.RECEIVED.value, S.QUEUED.value, S.SENT.value, S.UNDELIVERABLE.value})
# Where the status authority starts an item's history of reports (status_updates.change_item).
_HISTORY_START = ItemState(S.SENT)


def is_gateway_step(event: EventRecord) -> bool:
    return event.status in GATEWAY_STEPS and (event.item_id is None or event.source == GATEWAY)


@dataclass(slots=True)
class _Item:
    """One line item as the measures see it: when it came in and went out, and its reports."""

    intake: datetime | None = None
    sent: datetime | None = None
    reports: list[EventRecord] = field(default_factory=list)  # kept with a verdict: the history
    direct: list[EventRecord] = field(default_factory=list)  # the gateway's decisions outside it


class _Tally:
    """What one prescription adds to each cell."""

    def __init__(self, provider_ods: str, tenant_ods: str) -> None:
        self.provider_ods = provider_ods
        self.tenant_ods = tenant_ods
        self.cells: dict[CellKey, Figures] = {}

    def _figures(self, measure: MeasureId, month: str) -> Figures:
        key = CellKey(measure.value, self.provider_ods, self.tenant_ods, month)
        figures = self.cells.get(key)
        if figures is None:
            figures = self.cells[key] = Figures()
        return figures

    def count(self, measure: MeasureId, month: str, *, numerator: int = 0, denominator: int = 0) -> None:
        figures = self._figures(measure, month)
        figures.numerator += numerator
        figures.denominator += denominator

    def stratum(self, measure: MeasureId, month: str, breakdown: str, category: str, count: int = 1) -> None:
        categories = self._figures(measure, month).strata.setdefault(breakdown, {})
        categories[category] = categories.get(category, 0) + count

    def observe(self, measure: MeasureId, month: str, start: datetime, end: datetime) -> None:
        """One observation of the minutes from `start` to `end` (whole minutes, never negative)."""
        minutes = max(0, int((end - start).total_seconds() // 60))
        figures = self._figures(measure, month)
        figures.numerator += 1
        figures.distribution[minutes] = figures.distribution.get(minutes, 0) + 1


def prescription_figures(history: Sequence[EventRecord]) -> dict[CellKey, Figures]:
    """What one prescription's events (all of them, in id order) add to each cell."""
    if not history:
        return {}
    tally = _Tally(history[0].provider_ods, history[0].tenant_ods)
    items = _items(history)
    first_expiry: datetime | None = None
    for item in items:
        expired = _item_figures(item, tally)
        if expired is not None and (first_expiry is None or expired < first_expiry):
            first_expiry = expired
    if first_expiry is not None:
        tally.count(M.EXPIRED_UNFILLED, month_of(first_expiry), numerator=1)
    # Given up by the dispatcher: once per occasion, whether recorded for the prescription or per item.
    for moment in sorted(
        {e.occurred_at for e in history if e.status == S.UNDELIVERABLE and is_gateway_step(e)}
    ):
        tally.count(M.UNDELIVERABLE_ORDERS, month_of(moment), numerator=1)
    _refusals_at_send(history, items, tally)
    return {key: figures for key, figures in tally.cells.items() if not figures.is_empty()}


def _items(history: Sequence[EventRecord]) -> list[_Item]:
    """The prescription's line items, those with no event of their own yet included."""
    by_id: dict[str, _Item] = defaultdict(_Item)
    received: datetime | None = None
    sent: datetime | None = None
    item_count = 0
    for event in history:
        if event.item_id is None:
            if event.status == S.RECEIVED:
                received = _earliest(received, event.occurred_at)
                count = event.detail.get("items")
                if isinstance(count, int) and not isinstance(count, bool):
                    item_count = max(item_count, count)
            elif event.status == S.SENT:
                sent = _earliest(sent, event.occurred_at)
            continue
        item = by_id[event.item_id]
        if is_gateway_step(event):
            if event.status == S.RECEIVED:
                item.intake = _earliest(item.intake, event.occurred_at)
            elif event.status == S.SENT:
                item.sent = _earliest(item.sent, event.occurred_at)
        elif event.verdict is not None:
            item.reports.append(event)
        else:
            item.direct.append(event)
    items = [by_id[key] for key in sorted(by_id)]
    items.extend(_Item() for _ in range(item_count - len(items)))
    for item in items:
        item.intake = _earliest(item.intake, received)
        item.sent = _earliest(item.sent, sent)
    return items


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)


def replay(reports: Sequence[EventRecord]) -> list[tuple[EventRecord, Verdict]]:
    """An item's reports in the order they happened, each judged by the status authority's own
    replay (`derive`): applied, duplicate (the status it already had) or refused (impossible where
    it falls). So a duplicate counts once and a stale report only where it fits, as for the status."""
    ordered = sorted((e for e in reports if e.status in _STATUSES), key=lambda e: (e.occurred_at, e.id))
    verdicts = _verdicts(tuple((Status(e.status), e.source) for e in ordered))
    return list(zip(ordered, verdicts, strict=True))


_STATUSES = frozenset(status.value for status in Status)
_SAME_TIME = datetime(2000, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=65_536)
def _verdicts(sequence: tuple[tuple[Status, str], ...]) -> tuple[Verdict, ...]:
    """`derive`'s verdicts for reports already in the order they happened. They depend on that order,
    the statuses and the sources only, and the same few sequences come up again and again."""
    updates = [
        StatusUpdate(status, _SAME_TIME, source, index) for index, (status, source) in enumerate(sequence)
    ]
    _, verdicts = derive(_HISTORY_START, updates)
    return tuple(verdicts[index] for index in range(len(updates)))


def _item_figures(item: _Item, tally: _Tally) -> datetime | None:
    """Count one item's history; returns when it expired (None if it did not)."""
    if item.sent is not None:
        tally.count(M.QUERY_RATE, month_of(item.sent), denominator=1)
    judged = replay(item.reports)
    history = [event for event, verdict in judged if verdict is Verdict.APPLIED]
    accepted = False
    query_raised: datetime | None = None
    cancel_requested = False
    expired: datetime | None = None
    for event in history:
        month = month_of(event.occurred_at)
        if query_raised is not None:
            tally.observe(M.QUERY_TIME_TO_ANSWER, month, query_raised, event.occurred_at)
            query_raised = None
        if cancel_requested:
            tally.count(
                M.CANCELLATION_SUCCESS, month, numerator=int(event.status == S.CANCELLED), denominator=1
            )
            cancel_requested = False
        status = event.status
        if status == S.ACCEPTED and not accepted:
            accepted = True
            tally.count(M.REJECTION_RATE, month, denominator=1)
            if item.intake is not None:
                tally.observe(M.TIME_TO_ACCEPTANCE, month, item.intake, event.occurred_at)
        elif status == S.REJECTED:
            tally.count(M.REJECTION_RATE, month, numerator=1, denominator=1)
            tally.stratum(M.REJECTION_RATE, month, REASON, _reason_code(event.detail) or UNSPECIFIED)
        elif status == S.QUERY:
            tally.count(M.QUERY_RATE, month, numerator=1)
            query_raised = event.occurred_at
        elif status == S.CANCEL_REQUESTED:
            cancel_requested = True
        elif status in (S.DELIVERED, S.DELIVERY_FAILED):
            _delivery_attempt(event, month, tally)
        elif status == S.EXPIRED and expired is None:
            expired = event.occurred_at
    _on_time(judged, tally)
    for event in item.direct:
        if event.status == S.CANCELLED:
            tally.stratum(
                M.CANCELLATION_SUCCESS, month_of(event.occurred_at), SUPPLEMENT, CANCELLED_BEFORE_SENDING
            )
        elif event.status == S.REJECTED:
            _refused_at_send(event, 1, tally)
    return expired


def _delivery_attempt(event: EventRecord, month: str, tally: _Tally) -> None:
    failed = event.status == S.DELIVERY_FAILED
    tally.count(M.FAILED_DELIVERIES, month, numerator=int(failed), denominator=1)
    if failed:
        tally.stratum(M.FAILED_DELIVERIES, month, CAUSE, _reason_code(event.detail) or UNSPECIFIED)
        party = event.detail.get("responsible_party")
        tally.stratum(
            M.FAILED_DELIVERIES, month, RESPONSIBLE_PARTY, party if isinstance(party, str) else UNSPECIFIED
        )


def _on_time(judged: Sequence[tuple[EventRecord, Verdict]], tally: _Tally) -> None:
    """The item's agreed delivery date, and whether it was delivered by then (definitions: on-time).

    An item cancelled, rejected or expired has no delivery in its history: a report of one that
    happened after the end is refused by the replay, so such an item is never due."""
    due: date | None = None
    delivered_on: date | None = None
    for event, verdict in judged:
        day = local_date(event.occurred_at)
        # Reported again while already scheduled, the status is a duplicate but its window may be new:
        # that is how a delivery is rearranged.
        if event.status == S.DELIVERY_SCHEDULED and verdict in (Verdict.APPLIED, Verdict.DUPLICATE):
            agreed = agreed_date(event)
            # Rescheduled in time moves the date; after the agreed date has passed it does not.
            if agreed is not None and (due is None or day <= due):
                due = agreed
        elif event.status == S.DELIVERED and verdict is Verdict.APPLIED and delivered_on is None:
            delivered_on = day
    if due is None:
        if delivered_on is not None:
            tally.stratum(
                M.ON_TIME_DELIVERY, month_of_date(delivered_on), SUPPLEMENT, DELIVERED_WITHOUT_AGREED_DATE
            )
        return
    on_time = delivered_on is not None and delivered_on <= due
    tally.count(M.ON_TIME_DELIVERY, month_of_date(due), numerator=int(on_time), denominator=1)


def agreed_date(event: EventRecord) -> date | None:
    """The UK date a `delivery-scheduled` report agreed: its window's end (else start), never before
    the day it was reported. None without a usable window."""
    window = event.detail.get("delivery_window")
    if not isinstance(window, dict):
        return None
    value = window.get("end") or window.get("start")
    if not isinstance(value, str):
        return None
    agreed = fhir_date(value)
    if agreed is None:
        return None
    return max(agreed, local_date(event.occurred_at))


def fhir_date(value: str) -> date | None:
    """The UK date of a FHIR date or dateTime (a date and time without a zone is taken as UK time);
    None for a partial date (year, or year and month) or anything unreadable."""
    if len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.date() if moment.tzinfo is None else local_date(moment)


def _reason_code(detail: Mapping[str, Any]) -> str | None:
    reason = detail.get("reason")
    if isinstance(reason, dict) and isinstance(reason.get("code"), str) and reason["code"]:
        return str(reason["code"])[:64]
    return None


def _refusals_at_send(history: Sequence[EventRecord], items: Sequence[_Item], tally: _Tally) -> None:
    """A refusal at sending recorded once for the prescription: a rejection of every item still
    waiting then (no report or decision of its own yet). Recorded per item, it is one of the item's
    own decisions (`_item_figures`)."""
    for event in history:
        if event.item_id is not None or event.status != S.REJECTED:
            continue
        waiting = sum(
            1
            for item in items
            if all(other.occurred_at > event.occurred_at for other in (*item.reports, *item.direct))
        )
        if waiting:
            _refused_at_send(event, waiting, tally)


def _refused_at_send(event: EventRecord, items: int, tally: _Tally) -> None:
    """The provider's system refused the order for good when the gateway sent it."""
    month = month_of(event.occurred_at)
    code = event.detail.get("code")
    reason = str(code)[:64] if isinstance(code, str) and code else REFUSED_AT_SEND
    tally.count(M.REJECTION_RATE, month, numerator=items, denominator=items)
    tally.stratum(M.REJECTION_RATE, month, REASON, reason, items)


def restatements(history: Sequence[EventRecord], *, close_days: int) -> dict[MonthKey, datetime]:
    """The months these events belong to that they were recorded after the close of, each with the
    latest such recording time. An event belongs to the month it happened in and, for an agreed
    delivery, to the month of the agreed date; a duplicate report changes nothing and restates nothing."""
    restated: dict[MonthKey, datetime] = {}
    soonest = timedelta(days=close_days)
    for event in history:
        # A month closes at least `close_days` after anything in it happened (an agreed date is
        # never before the report): an event recorded sooner restates nothing.
        if event.verdict == Verdict.DUPLICATE or event.recorded_at - event.occurred_at <= soonest:
            continue
        months = {month_of(event.occurred_at)}
        if event.status == S.DELIVERY_SCHEDULED:
            agreed = agreed_date(event)
            if agreed is not None:
                months.add(month_of_date(agreed))
        for month in months:
            if event.recorded_at > _closes(month, close_days):
                key = MonthKey(event.provider_ods, event.tenant_ods, month)
                if key not in restated or restated[key] < event.recorded_at:
                    restated[key] = event.recorded_at
    return restated


@lru_cache(maxsize=1024)
def _closes(month: str, close_days: int) -> datetime:
    return month_closes_at(month, close_days)


def add_into(total: dict[CellKey, Figures], part: Mapping[CellKey, Figures], sign: int = 1) -> None:
    """Add (or with sign -1, take away) `part` into `total`, dropping cells that come to nothing."""
    for key, figures in part.items():
        current = total.get(key)
        if current is None:
            current = total[key] = Figures()
        current.add(figures, sign)
        if current.is_empty():
            del total[key]


def latest_into(total: dict[MonthKey, datetime], part: Mapping[MonthKey, datetime]) -> None:
    for key, moment in part.items():
        if key not in total or total[key] < moment:
            total[key] = moment


def all_figures(histories: Iterable[Sequence[EventRecord]]) -> dict[CellKey, Figures]:
    """Every cell, from whole prescription histories: the full recompute."""
    total: dict[CellKey, Figures] = {}
    for history in histories:
        add_into(total, prescription_figures(history))
    return total


def percentile(distribution: Mapping[int, int], numerator: int, denominator: int) -> int | None:
    """The nearest-rank percentile (numerator/denominator, e.g. 9/10): the smallest value such that
    at least that share of the observations are no larger. None without observations."""
    total = sum(distribution.values())
    if total <= 0:
        return None
    rank = max(1, -(-total * numerator // denominator))
    running = 0
    for minutes in sorted(distribution):
        running += distribution[minutes]
        if running >= rank:
            return minutes
    return max(distribution)
