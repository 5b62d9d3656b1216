"""Delivering outbox messages: the channel interface the dispatcher uses for provider adapters and
rest-hook notifications alike, and what becomes of a provider message once its send is over.

A channel delivers one claimed message and says what happened (`DeliveryOutcome`); the dispatcher
owns retries, backoff and circuit breaking, and hands the outcome back to the channel's `record`,
which runs in a group-committed transaction and only if the dispatcher still holds the lease.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from gateway.domain.cancellation import provider_answered_cancel
from gateway.domain.context import Context
from gateway.domain.status import Status
from gateway.domain.status_authority import StatusListener, move_prescription
from gateway.store import items, outbox
from gateway.store.db import Tx
from gateway.store.outbox import Claimed, ClaimedMessage, Kind


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"  # the receiver took it
    REFUSED = "refused"  # the receiver refused it for good
    FAILED = "failed"  # worth trying again (unreachable, busy, timed out)
    DROPPED = "dropped"  # not sent: there is no longer anyone to send it to
    HELD = "held"  # not sent: the receiver fetches it itself (a provider that pulls its orders)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    kind: OutcomeKind
    reason: str | None = None
    code: str | None = None
    retry_after: float | None = None
    # Delivered, but the receiver's acknowledgement only says it arrived: the provider's answer to a
    # cancellation comes later as a status report.
    answer_follows: bool = False

    @classmethod
    def delivered(cls, *, answer_follows: bool = False) -> DeliveryOutcome:
        return cls(OutcomeKind.DELIVERED, answer_follows=answer_follows)

    @classmethod
    def held(cls, reason: str) -> DeliveryOutcome:
        return cls(OutcomeKind.HELD, reason=reason)

    @classmethod
    def refused(cls, reason: str, code: str | None = None) -> DeliveryOutcome:
        return cls(OutcomeKind.REFUSED, reason=reason, code=code)

    @classmethod
    def failed(cls, reason: str, *, retry_after: float | None = None) -> DeliveryOutcome:
        return cls(OutcomeKind.FAILED, reason=reason, retry_after=retry_after)

    @classmethod
    def dropped(cls, reason: str) -> DeliveryOutcome:
        return cls(OutcomeKind.DROPPED, reason=reason)


class Recorded(StrEnum):
    """What the outcome did to the message: its metric and log label."""

    DELIVERED = "delivered"
    REFUSED = "rejected"
    RETRY = "retry"
    DEAD = "dead"
    DROPPED = "dropped"
    HELD = "held"
    LEASE_LOST = "lease-lost"


M = TypeVar("M", bound=Claimed, contravariant=True)


class DeliveryChannel(Protocol[M]):
    """One way out of the outbox (a provider's adapter, a subscriber's rest-hook endpoint)."""

    name: str
    log_events: Mapping[Recorded, str]
    """The log event of each outcome (operators search logs by them)."""

    async def prepare(self, messages: Sequence[M]) -> None:
        """Called with each batch of claimed messages before any of them is delivered."""

    def destination(self, message: M) -> str | None:
        """Whose circuit breaker the message counts against (None: no breaker)."""

    async def deliver(self, message: M) -> DeliveryOutcome:
        """One attempt; never raises (a failure is an outcome)."""

    def record(
        self,
        tx: Tx,
        message: M,
        outcome: DeliveryOutcome,
        *,
        owner: str,
        now: datetime,
        retry_at: datetime | None,
    ) -> Recorded:
        """What became of the message, in the dispatcher's transaction; `retry_at` None: no more tries."""

    def observe(self, message: M, recorded: Recorded) -> None:
        """Count the outcome (metrics)."""

    async def aclose(self) -> None: ...


def record_provider_outcome(
    tx: Tx,
    message: ClaimedMessage,
    outcome: DeliveryOutcome,
    *,
    owner: str,
    now: datetime,
    retry_at: datetime | None,
    listener: StatusListener | None,
) -> Recorded:
    """An order is `sent`, `rejected` (with the reason) or, out of retries, `undeliverable`; a
    cancellation is agreed or refused (the items go back where they were), or stays `cancel-requested`
    when the provider's answer follows as a status report. A message held for a provider that pulls
    its orders changes no status: the provider's acknowledgement does (`gateway.domain.pull`)."""
    if outcome.kind is OutcomeKind.FAILED:
        return _record_failure(
            tx, message, outcome, owner=owner, now=now, retry_at=retry_at, listener=listener
        )
    if outcome.kind is OutcomeKind.HELD:
        return _record_held(tx, message, owner=owner, now=now)
    refusal = (
        (outcome.reason or "rejected by the provider")[:500] if outcome.kind is OutcomeKind.REFUSED else None
    )
    if not outbox.mark_done(tx, owner, message.outbox_id, now=now, note=refusal):
        return Recorded.LEASE_LOST
    if message.kind == Kind.CANCEL.value:
        # With `answer_follows` the items stay `cancel-requested` until the provider's status report
        # answers; otherwise taking the cancellation is agreeing to it.
        if refusal is not None or not outcome.answer_follows:
            provider_answered_cancel(
                tx,
                prescription_id=message.prescription_id,
                provider_ods=message.provider_ods,
                agreed=refusal is None,
                reason=refusal,
                now=now,
                listener=listener,
            )
    elif refusal is None:
        detail = {"provider": message.provider_ods, "attempts": message.attempts + 1}
        move_prescription(tx, message.prescription_id, Status.SENT, detail=detail, now=now, listener=listener)
    else:
        # The reason as every status event carries one, so the Task's history shows it as statusReason.
        detail = {"provider": message.provider_ods, "reason": {"code": outcome.code, "text": refusal}}
        move_prescription(
            tx, message.prescription_id, Status.REJECTED, detail=detail, now=now, listener=listener
        )
    return Recorded.DELIVERED if refusal is None else Recorded.REFUSED


def _record_held(tx: Tx, message: ClaimedMessage, *, owner: str, now: datetime) -> Recorded:
    """Held for the provider to pull; a cancellation the provider has answered already (it reads the
    `cancel-requested` items, not the message) is done instead."""
    if message.kind == Kind.CANCEL.value:
        # Locked: a provider's answer being applied now is either seen here or sees the held row.
        waiting = items.of_prescription(
            tx, message.prescription_id, statuses=[Status.CANCEL_REQUESTED.value], for_change=True
        )
        if not waiting:
            done = outbox.mark_done(tx, owner, message.outbox_id, now=now)
            return Recorded.DELIVERED if done else Recorded.LEASE_LOST
    held = outbox.mark_held(tx, owner, message.outbox_id, now=now)
    return Recorded.HELD if held else Recorded.LEASE_LOST


def _record_failure(
    tx: Tx,
    message: ClaimedMessage,
    outcome: DeliveryOutcome,
    *,
    owner: str,
    now: datetime,
    retry_at: datetime | None,
    listener: StatusListener | None,
) -> Recorded:
    error = outcome.reason or "not delivered"
    attempts = message.attempts + 1
    if not outbox.mark_failed(
        tx, owner, message.outbox_id, attempts=attempts, error=error, retry_at=retry_at, now=now
    ):
        return Recorded.LEASE_LOST
    if retry_at is not None:
        return Recorded.RETRY
    if message.kind == Kind.ORDER.value:
        detail = {"provider": message.provider_ods, "attempts": attempts, "error": error[:200]}
        move_prescription(
            tx, message.prescription_id, Status.UNDELIVERABLE, detail=detail, now=now, listener=listener
        )
    return Recorded.DEAD


def redrive(ctx: Context, *, prescription_id: str | None = None, provider_ods: str | None = None) -> int:
    """Put dead messages to providers back in the queue (after the provider is fixed); returns how many.

    Dead notifications stay dead: their subscription is in error, and the subscriber resynchronises.
    """
    now = ctx.clock()
    with ctx.db.transaction() as tx:
        dead = outbox.requeue_dead(tx, now=now, prescription_id=prescription_id, provider_ods=provider_ods)
        for message in dead:
            if message.kind == Kind.ORDER.value:
                move_prescription(
                    tx,
                    message.prescription_id,
                    Status.QUEUED,
                    detail={"redriven": True},
                    now=now,
                    listener=ctx.listener,
                )
    if dead:
        ctx.wake_dispatcher()
    return len(dead)
