"""The rest-hook delivery channel: notifications to subscribers, and what becomes of each.

A 2xx answer is delivery and resets the subscription's count of failures in a row; anything else is
retried with the dispatcher's backoff. After `error_after` failures in a row (or when the retries are
spent) the subscription is put in `error` and its queued notifications die with it, so a subscriber
never sees a later state after a lost one: it resubscribes and reads the current state instead. A
notification whose subscription was turned off or failed before it went is dropped, unsent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from auth.signing import SigningKeys
from gateway.domain.delivery import DeliveryOutcome, OutcomeKind, Recorded
from gateway.metrics import NOTIFICATIONS
from gateway.notify.delivery import RestHookSender
from gateway.notify.endpoints import EndpointPolicy
from gateway.store import outbox, subscriptions
from gateway.store.db import Tx
from gateway.store.outbox import ClaimedNotification


class RestHookChannel:
    name = "rest-hook"
    log_events: Mapping[Recorded, str] = {
        Recorded.DELIVERED: "notification_delivered",
        Recorded.RETRY: "notification_failed_will_retry",
        Recorded.DEAD: "subscription_in_error",
        Recorded.DROPPED: "notification_dropped",
        Recorded.LEASE_LOST: "notification_lease_lost",
    }

    def __init__(
        self,
        signing_keys: SigningKeys,
        *,
        timeout_seconds: float,
        error_after: int,
        endpoints: EndpointPolicy,
    ) -> None:
        self._sender = RestHookSender(signing_keys, timeout_seconds=timeout_seconds, endpoints=endpoints)
        self._error_after = error_after

    async def prepare(self, messages: Sequence[ClaimedNotification]) -> None:
        return None

    def destination(self, message: ClaimedNotification) -> str | None:
        return None

    async def deliver(self, message: ClaimedNotification) -> DeliveryOutcome:
        if message.subscription_status != subscriptions.ACTIVE:
            return DeliveryOutcome.dropped(f"not sent: the subscription is {message.subscription_status}")
        try:
            result = await self._sender.post(message)
        except Exception as exc:  # noqa: BLE001  (a signing or client bug must not lose the notification)
            return DeliveryOutcome.failed(f"gateway error {type(exc).__name__}")
        if result.delivered:
            return DeliveryOutcome.delivered()
        return DeliveryOutcome.failed(result.error or "not delivered", retry_after=result.retry_after)

    def record(
        self,
        tx: Tx,
        message: ClaimedNotification,
        outcome: DeliveryOutcome,
        *,
        owner: str,
        now: datetime,
        retry_at: datetime | None,
    ) -> Recorded:
        if outcome.kind is OutcomeKind.DROPPED:
            dropped = outbox.release_claim(
                tx,
                owner,
                message.outbox_id,
                now=now,
                state=outbox.State.DEAD.value,
                last_error=outcome.reason,
            )
            return Recorded.DROPPED if dropped else Recorded.LEASE_LOST
        if outcome.kind is OutcomeKind.DELIVERED:
            if not outbox.mark_done(tx, owner, message.outbox_id, now=now):
                return Recorded.LEASE_LOST
            subscriptions.reset_failures(tx, message.subscription_id)
            return Recorded.DELIVERED
        return self._record_failure(
            tx, message, outcome.reason or "not delivered", owner=owner, now=now, retry_at=retry_at
        )

    def _record_failure(
        self,
        tx: Tx,
        message: ClaimedNotification,
        error: str,
        *,
        owner: str,
        now: datetime,
        retry_at: datetime | None,
    ) -> Recorded:
        failures = subscriptions.failures_in_a_row(tx, message.subscription_id) + 1
        give_up = retry_at is None or failures >= self._error_after
        if not outbox.mark_failed(
            tx,
            owner,
            message.outbox_id,
            attempts=message.attempts + 1,
            error=error,
            retry_at=None if give_up else retry_at,
            now=now,
        ):
            return Recorded.LEASE_LOST
        subscription_error = f"{failures} deliveries in a row failed; the last: {error}" if give_up else None
        subscriptions.record_failures(
            tx, message.subscription_id, failures=failures, error=subscription_error, now=now
        )
        if not give_up:
            return Recorded.RETRY
        outbox.kill_pending_notifications(
            tx, message.subscription_id, now=now, reason="not sent: the subscription went into error"
        )
        return Recorded.DEAD

    def observe(self, message: ClaimedNotification, recorded: Recorded) -> None:
        if recorded is not Recorded.LEASE_LOST:
            NOTIFICATIONS.labels(outcome=recorded.value).inc()

    async def aclose(self) -> None:
        await self._sender.aclose()
