"""The one place a line item's status changes: `change_status`, for the gateway's own moves and for
every report from a provider or a trust alike, judged by the transition table in `status`.

Two kinds of move (see `status.JOURNEY_MOVES`):
- the order's journey to the provider (queued, sent, undeliverable, refused at send, cancelled before
  it went) is judged against where the item is now, in the order the moves are made;
- a report about the order at the provider is kept in the event log with its verdict (applied,
  duplicate, superseded) and the item's history is replayed in the order the reports say things
  happened (`lastModified`), from `sent`; so the order reports arrive in does not matter. An illegal
  move is refused (409) with both statuses named and changes nothing.

The status listener (subscriptions hang off it) hears every applied change in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain.status import (
    AT_PROVIDER,
    GATEWAY_SOURCE,
    IllegalTransition,
    ItemState,
    Status,
    StatusUpdate,
    Verdict,
    actor_of,
    admit_update,
    attention_status,
    is_journey_move,
    prescription_status,
    step,
)
from gateway.domain.tasks import render_task
from gateway.store import events, items
from gateway.store.db import Tx
from gateway.store.items import ItemKey, ItemView

# Where a journey ended before the provider ever had the order: a report cannot follow it.
_ENDED_BEFORE_THE_PROVIDER = frozenset({Status.CANCELLED, Status.REJECTED, Status.EXPIRED})


@dataclass(frozen=True, slots=True)
class Applied:
    """A change as applied: the Task as it now is, the verdict, and the item."""

    task: dict[str, Any]
    verdict: Verdict
    view: ItemView


StatusListener = Callable[[Tx, Applied, datetime], None]


class RefusedMove(OperationOutcomeError):  # noqa: N818  (a refusal, named for what it is)
    """An illegal move (409): the item's status and the one asked for are both named."""

    def __init__(self, exc: IllegalTransition, expression: str | None) -> None:
        super().__init__(
            409,
            [
                Issue(
                    IssueType.BUSINESS_RULE,
                    ErrorCode.NOT_ALLOWED,
                    f"The item is '{exc.current}' and cannot become '{exc.requested}'",
                    expression,
                )
            ],
        )
        self.current = exc.current
        self.requested = exc.requested


def change_status(
    tx: Tx,
    item: ItemView,
    to: Status,
    *,
    source: str,
    occurred_at: datetime,
    detail: dict[str, Any],
    now: datetime,
    listener: StatusListener | None,
    expression: str | None = None,
) -> Applied:
    """Move one item (read `for_change`, so locked) to `to` as `source` says, or raise `RefusedMove`."""
    if is_journey_move(to, actor_of(source)):
        applied = _journey_move(tx, item, to, source=source, detail=detail, now=now, expression=expression)
    else:
        applied = _report(
            tx,
            item,
            to,
            source=source,
            occurred_at=occurred_at,
            detail=detail,
            now=now,
            expression=expression,
        )
    if listener is not None:
        listener(tx, applied, now)
    return applied


def _journey_move(
    tx: Tx,
    item: ItemView,
    to: Status,
    *,
    source: str,
    detail: dict[str, Any],
    now: datetime,
    expression: str | None,
) -> Applied:
    current = ItemState(Status(item.status), _status_or_none(item.resume_status))
    try:
        moved = step(current, to, actor_of(source))
    except IllegalTransition as exc:
        raise RefusedMove(exc, expression) from exc
    events.append(
        tx,
        [
            events.NewEvent(
                item.prescription_id, item.item_id, to.value, now, now, source, detail, verdict=None
            )
        ],
    )
    return _record(tx, item, moved, last_modified=item.last_modified, now=now, verdict=Verdict.APPLIED)


def _report(
    tx: Tx,
    item: ItemView,
    to: Status,
    *,
    source: str,
    occurred_at: datetime,
    detail: dict[str, Any],
    now: datetime,
    expression: str | None,
) -> Applied:
    history = [
        StatusUpdate(Status(report.status), report.occurred_at, report.source, report.event_id)
        for report in events.reports_of_item(tx, item.item_id)
    ]
    if Status(item.status) in _ENDED_BEFORE_THE_PROVIDER and not history:
        raise RefusedMove(IllegalTransition(Status(item.status), to), expression)
    update = StatusUpdate(to, occurred_at, source, events.next_sequence(tx))
    try:
        state, verdict = admit_update(ItemState(AT_PROVIDER), history, update)
    except IllegalTransition as exc:
        raise RefusedMove(exc, expression) from exc
    events.append(
        tx,
        [
            events.NewEvent(
                item.prescription_id, item.item_id, to.value, occurred_at, now, source, detail, verdict.value
            )
        ],
    )
    last_modified = max(filter(None, (item.last_modified, occurred_at)))
    return _record(tx, item, state, last_modified=last_modified, now=now, verdict=verdict)


def _record(
    tx: Tx,
    item: ItemView,
    state: ItemState,
    *,
    last_modified: datetime | None,
    now: datetime,
    verdict: Verdict,
) -> Applied:
    items.write_status(
        tx,
        item.item_id,
        status=state.status.value,
        resume=state.resume.value if state.resume else None,
        last_modified=last_modified,
        now=now,
    )
    statuses = [Status(status) for status in items.statuses_of(tx, item.prescription_id)]
    derived, attention = prescription_status(statuses), attention_status(statuses)
    items.write_prescription_status(
        tx,
        item.prescription_id,
        status=derived.status.value,
        partial=derived.partial,
        attention=attention.value if attention else None,
        now=now,
    )
    view = items.find(tx, ItemKey.by_id(item.item_id))
    assert view is not None, "the item was read in this transaction"
    detail = events.latest_detail(tx, item.item_id, verdict=Verdict.APPLIED.value)
    return Applied(task=render_task(view, detail=detail), verdict=verdict, view=view)


def _status_or_none(value: str | None) -> Status | None:
    return None if value is None else Status(value)


def move_prescription(
    tx: Tx,
    prescription_id: str,
    to: Status,
    *,
    detail: dict[str, Any],
    now: datetime,
    listener: StatusListener | None,
) -> list[Applied]:
    """A move of the gateway's own (sent, refused at send, undeliverable, re-driven) for each item of
    the prescription the table allows it for; the others have moved on already and stay as they are."""
    moved = []
    for item in items.of_prescription(tx, prescription_id, for_change=True):
        try:
            moved.append(
                change_status(
                    tx,
                    item,
                    to,
                    source=GATEWAY_SOURCE,
                    occurred_at=now,
                    detail=detail,
                    now=now,
                    listener=listener,
                )
            )
        except RefusedMove:
            continue
    return moved
