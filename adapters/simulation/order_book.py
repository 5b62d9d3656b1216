"""The simulated provider's book of orders, shared by the simulators of every protocol: intake (each
message taken once, whatever the resends), cancellation rules, and the lifecycle each accepted order is
played through. The protocol's simulator turns the `LifecycleEvent`s it is handed into its own status
messages (an ORR^O02, a row of a status file, a Task update).

Intake, cancellation and the lifecycle run on the simulator's event loop; the reads (`orders`,
`events`, `receipt_counts`) and `reset` are safe from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from adapters.inbound import DeliveryWindow
from adapters.simulation.lifecycle import (
    INTAKE_REJECTIONS,
    TOO_LATE_TO_CANCEL,
    UNKNOWN_PRESCRIPTION,
    LifecycleSettings,
    RealTime,
    Reason,
    SimulationTime,
    Step,
    order_random,
    plan_lifecycle,
)

log = logging.getLogger(__name__)

CANCEL_REFUSED = "cancel-refused"
_DISPENSED_OR_LATER = frozenset(
    {"dispensed", "delivery-scheduled", "out-for-delivery", "delivered", "delivery-failed"}
)
_FINISHED = frozenset({"rejected", "cancelled", "delivered"})


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One status change of one item, for the protocol to report (`status` may be `cancel-refused`)."""

    sequence: int
    order_key: str
    short_form_id: str
    item_id: str
    status: str
    occurred_at: datetime
    reason: Reason | None = None
    window: DeliveryWindow | None = None
    attempt: int | None = None


class Intake(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class BookedOrder:
    """An order as the simulated provider holds it."""

    key: str
    short_form_id: str
    item_ids: tuple[str, ...]
    received_at: datetime
    receipts: int
    item_statuses: dict[str, str]
    lifecycle_done: bool
    message: bytes


@dataclass(frozen=True, slots=True)
class IntakeResult:
    outcome: Intake
    reason: Reason | None = None
    first: bool = True
    """False when the key was seen before (the answer repeats the first one)."""


@dataclass(slots=True)
class _Order:
    key: str
    short_form_id: str
    item_ids: tuple[str, ...]
    message: bytes
    received_at: datetime
    item_statuses: dict[str, str]
    last_modified: datetime
    lifecycle_done: bool = False


Deliver = Callable[[list[LifecycleEvent]], Awaitable[None]]
Record = Callable[[list[LifecycleEvent]], None]


class OrderBook:
    def __init__(
        self,
        settings: Callable[[], LifecycleSettings],
        *,
        time: SimulationTime,
        deliver: Deliver,
        on_record: Record | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        """`deliver` sends events in the protocol (awaited by the lifecycle, in order). `on_record`, when
        given, sees them the moment they happen, under `lock` (share it to keep state beside the book)."""
        self._settings = settings
        self._time = time
        self._deliver = deliver
        self._on_record = on_record
        self._lock = lock or threading.RLock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._generation = 0
        self._clear()

    def _clear(self) -> None:
        self._orders: dict[str, _Order] = {}
        self._by_short_form: dict[str, _Order] = {}
        self._answers: dict[str, IntakeResult] = {}
        self._receipts: dict[str, int] = {}
        self._events: list[LifecycleEvent] = []

    # --- intake and cancellation, on the simulator's loop ---------------------------------------

    def take(
        self, *, key: str, short_form_id: str, item_ids: tuple[str, ...], message: bytes
    ) -> IntakeResult:
        """A new order under idempotency `key`: a repeat of the key (or of the same message) is a duplicate."""
        with self._lock:
            self._receipts[key] = self._receipts.get(key, 0) + 1
            if key in self._answers:
                first = self._answers[key]
                if first.outcome is Intake.REFUSED:
                    return IntakeResult(Intake.REFUSED, first.reason, first=False)
                return IntakeResult(Intake.DUPLICATE, first=False)
            existing = self._by_short_form.get(short_form_id)
            if existing is not None:
                outcome = Intake.DUPLICATE if existing.message == message else Intake.CONFLICT
                return IntakeResult(outcome)
            settings = self._settings()
            if order_random(settings.seed, "intake", short_form_id).random() < settings.reject_rate:
                reason = order_random(settings.seed, "intake-reason", short_form_id).choice(INTAKE_REJECTIONS)
                self._answers[key] = IntakeResult(Intake.REFUSED, reason)
                return self._answers[key]
            now = self._time.now()
            order = _Order(
                key=key,
                short_form_id=short_form_id,
                item_ids=item_ids,
                message=message,
                received_at=now,
                item_statuses=dict.fromkeys(item_ids, "received"),
                last_modified=now,
            )
            self._orders[key] = order
            self._by_short_form[short_form_id] = order
            self._answers[key] = IntakeResult(Intake.ACCEPTED)
            if settings.lifecycle:
                steps = plan_lifecycle(settings, short_form_id, item_ids)
                self._spawn(self._run(order, steps, self._generation))
            else:
                order.lifecycle_done = True
            return self._answers[key]

    def cancel(self, short_form_id: str, item_ids: Collection[str] | None = None) -> Reason | None:
        """Cancel some (or all) items; None when done, else why not. The answer is reported either
        way, as `cancelled` or `cancel-refused` events."""
        with self._lock:
            order = self._by_short_form.get(short_form_id)
            if order is None:
                return UNKNOWN_PRESCRIPTION
            targets = [item for item in order.item_ids if not item_ids or item in item_ids]
            if any(order.item_statuses[item] in _DISPENSED_OR_LATER for item in targets):
                events = self._record(order, CANCEL_REFUSED, targets, reason=TOO_LATE_TO_CANCEL)
                refusal: Reason | None = TOO_LATE_TO_CANCEL
            else:
                live = [item for item in targets if order.item_statuses[item] not in _FINISHED]
                events = self._record(order, "cancelled", live) if live else []
                refusal = None
            if all(status in _FINISHED for status in order.item_statuses.values()):
                order.lifecycle_done = True
        if events:
            self._spawn(self._deliver(events))
        return refusal

    def refusal_events(
        self, *, key: str, short_form_id: str, item_ids: tuple[str, ...], reason: Reason
    ) -> list[LifecycleEvent]:
        """`rejected` events for an order refused at intake, for protocols whose only answer is a status
        report (files, pull): logged like every other event, for the protocol to deliver."""
        with self._lock:
            now = self._time.now()
            events = [
                LifecycleEvent(
                    len(self._events) + position, key, short_form_id, item, "rejected", now, reason
                )
                for position, item in enumerate(item_ids, start=1)
            ]
            self._events.extend(events)
            return events

    # --- the lifecycle ---------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(_run_awaitable(work))
        with self._lock:
            self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator background task failed", exc_info=task.exception())

    async def _run(self, order: _Order, steps: list[Step], generation: int) -> None:
        for step in steps:
            await self._time.sleep(step.delay_seconds)
            with self._lock:
                if generation != self._generation:
                    return
                live = [
                    item for item in step.items if order.item_statuses[item] not in ("cancelled", "rejected")
                ]
                events = self._record(order, step.status, live, reason=step.reason, step=step)
                finished = all(status in _FINISHED for status in order.item_statuses.values())
            if events:
                await self._deliver(events)
            if finished:
                break
        with self._lock:
            # Done once its last reports are delivered, so a reader who sees it done sees them too.
            order.lifecycle_done = True

    def _record(
        self,
        order: _Order,
        status: str,
        items: list[str],
        *,
        reason: Reason | None = None,
        step: Step | None = None,
    ) -> list[LifecycleEvent]:
        """Log one event per item (lock held); a refused cancel leaves the statuses as they are."""
        now = max(self._time.now(), order.last_modified + timedelta(microseconds=1))
        order.last_modified = now
        window = _window(step, now) if step is not None else None
        attempt = step.attempt if step is not None else None
        events = []
        for item in items:
            if status != CANCEL_REFUSED:
                order.item_statuses[item] = status
            event = LifecycleEvent(
                sequence=len(self._events) + 1,
                order_key=order.key,
                short_form_id=order.short_form_id,
                item_id=item,
                status=status,
                occurred_at=now,
                reason=reason,
                window=window,
                attempt=attempt,
            )
            self._events.append(event)
            events.append(event)
        if self._on_record is not None and events:
            self._on_record(events)
        return events

    # --- control and reads, from any thread ------------------------------------------------------

    def reset(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Forget every order and event and stop running lifecycles."""
        with self._lock:
            self._generation += 1
            self._clear()
            running = list(self._tasks)
        if loop is not None and not loop.is_closed():
            for task in running:
                loop.call_soon_threadsafe(task.cancel)

    async def stop(self) -> None:
        with self._lock:
            running = list(self._tasks)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def orders(self) -> list[BookedOrder]:
        with self._lock:
            return [self._snapshot(order) for order in self._orders.values()]

    def order(self, short_form_id: str) -> BookedOrder | None:
        with self._lock:
            order = self._by_short_form.get(short_form_id)
            return self._snapshot(order) if order else None

    def events(self) -> list[LifecycleEvent]:
        with self._lock:
            return list(self._events)

    def receipt_counts(self) -> dict[str, int]:
        """Messages per idempotency key: at-least-once delivery shows as counts of one or more."""
        with self._lock:
            return dict(self._receipts)

    def _snapshot(self, order: _Order) -> BookedOrder:
        return BookedOrder(
            key=order.key,
            short_form_id=order.short_form_id,
            item_ids=order.item_ids,
            received_at=order.received_at,
            receipts=self._receipts.get(order.key, 0),
            item_statuses=dict(order.item_statuses),
            lifecycle_done=order.lifecycle_done,
            message=order.message,
        )


async def _run_awaitable(work: Awaitable[Any]) -> None:
    await work


def _window(step: Step, now: datetime) -> DeliveryWindow | None:
    if step.window_days_ahead is None or step.window_hours is None:
        return None
    day = (now + timedelta(days=step.window_days_ahead)).replace(minute=0, second=0, microsecond=0)
    return DeliveryWindow(
        start=day.replace(hour=step.window_hours[0]), end=day.replace(hour=step.window_hours[1])
    )


C = TypeVar("C", bound=LifecycleSettings)


class BookedProvider(Generic[C]):
    """What every non-HTTP provider simulator shares: its config (changed at run time through
    `configure`), one-shot knobs, and the order book that plays the lifecycle. A subclass says how
    events go out in `_report`."""

    def __init__(self, config: C, *, time_source: SimulationTime | None = None) -> None:
        self._config = config
        self._time = time_source or RealTime()
        self._lock = threading.RLock()
        self.book = OrderBook(lambda: self._config, time=self._time, deliver=self._report)

    @property
    def config(self) -> C:
        return self._config

    def configure(self, **changes: Any) -> C:
        with self._lock:
            self._config = self._config.updated(changes)
            return self._config

    def _take_knob(self, name: str) -> bool:
        """True once for each count set on a `..._next` knob, counting it down."""
        with self._lock:
            remaining = getattr(self._config, name)
            if remaining:
                self._config = self._config.updated({name: remaining - 1})
            return bool(remaining)

    async def _report(self, events: list[LifecycleEvent]) -> None:
        raise NotImplementedError
