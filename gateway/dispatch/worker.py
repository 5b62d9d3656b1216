"""The dispatcher: claims due outbox messages and sends each through its provider's adapter, or, for
a notification, to its subscriber's rest-hook endpoint (see `gateway.notify.delivery`).

It runs inside `homecare-gateway serve` by default and alone as `homecare-gateway worker`; any
number of them may run against one database. Sends run concurrently (up to `max_in_flight`), one
message per prescription (or per subscription) at a time, each under a lease. Failures are retried
with exponential backoff and jitter; a provider that keeps failing trips its circuit breaker; a
message that spends its retry budget is dead and its prescription `undeliverable` until an operator
re-drives it. A subscription whose deliveries keep failing goes into `error`.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from adapters.base import Adapter, AdapterTransportError, Order
from adapters.registry import AdapterRegistryError, create_adapter
from auth.signing import SigningKeys
from gateway.clock import Clock
from gateway.dispatch import outbox
from gateway.dispatch.policy import CircuitBreaker
from gateway.dispatch.settings import DispatcherSettings
from gateway.domain.cancellation import StatusListener
from gateway.logs import get_logger
from gateway.metrics import BREAKER_OPEN, NOTIFICATIONS, SENDS
from gateway.notify import delivery
from gateway.store.db import Database
from gateway.store.models import Provider
from gateway.store.providers import list_providers
from gateway.store.subscriptions import ACTIVE
from gateway.store.writer import BatchWriter

log = get_logger("gateway.dispatch")
T = TypeVar("T")


class Doorbell:
    """Rung by intake after a commit so an in-process dispatcher sends at once instead of polling.

    A ring may name the provider the new message is for: a dispatcher whose breaker holds that
    provider back has nothing to claim for it, so it lets the ring pass (see `Dispatcher._idle`).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._rung_for: set[str | None] = set()

    def ring(self, provider_ods: str | None = None) -> None:
        self._rung_for.add(provider_ods)
        self._event.set()

    async def wait(self, timeout: float) -> frozenset[str | None]:
        """Who rang (None: a ring that named no provider); empty when the timeout passed first."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            rung: frozenset[str | None] = frozenset()
        else:
            rung = frozenset(self._rung_for)
        self._rung_for.clear()
        self._event.clear()
        return rung


class Dispatcher:
    def __init__(
        self,
        db: Database,
        *,
        clock: Clock,
        settings: DispatcherSettings | None = None,
        doorbell: Doorbell | None = None,
        seed: int | None = None,
        on_status_change: StatusListener | None = None,
        signing_keys: SigningKeys | None = None,
    ) -> None:
        """Without `signing_keys` the dispatcher sends to providers only and leaves notifications
        (which must be signed) to dispatchers that have them."""
        self._db = db
        self._clock = clock
        self._status_listener = on_status_change
        self._settings = settings or DispatcherSettings()
        self._doorbell = doorbell or Doorbell()
        self._rng = random.Random(seed)  # noqa: S311  (jitter, not security)
        self._breaker = CircuitBreaker(
            threshold=self._settings.breaker_threshold, cooldown=self._settings.breaker_cooldown_seconds
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._adapters: dict[str, tuple[tuple[str, str], Adapter]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._send_finished = asyncio.Event()
        self._signing_keys = signing_keys
        self._rest_hooks: delivery.RestHookSender | None = None
        # Outcomes are recorded in group commits: under load one transaction records many sends.
        self._writer = BatchWriter(db)

    @property
    def doorbell(self) -> Doorbell:
        return self._doorbell

    async def run(self, stop: asyncio.Event) -> None:
        log.info("dispatcher_started", owner=self.owner)
        try:
            while not stop.is_set():
                claimed = await self._claim()
                if not claimed:
                    await self._idle(stop)
        finally:
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self.aclose()
            log.info("dispatcher_stopped", owner=self.owner)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for the doorbell, a finished send (room for more), the poll interval or the stop.

        A ring only for providers whose breaker is open is let pass: their messages cannot be
        claimed, and claiming on every intake commit while a provider is down would scan its
        growing backlog (under the write lock) hundreds of times a second.
        """
        self._send_finished.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.poll_seconds
        while True:
            bell = asyncio.ensure_future(self._doorbell.wait(max(deadline - loop.time(), 0)))
            waits = [
                bell,
                asyncio.ensure_future(self._send_finished.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            if bell not in done or not self._only_held_back(bell.result()):
                return

    def _only_held_back(self, rung: frozenset[str | None]) -> bool:
        return bool(rung) and None not in rung and rung <= self._breaker.open_providers()

    async def _claim(self) -> list[outbox.ClaimedMessage | outbox.ClaimedNotification]:
        room = self._settings.max_in_flight - len(self._in_flight)
        if room <= 0:
            return []
        claimed = await asyncio.to_thread(
            outbox.claim_due,
            self._db,
            owner=self.owner,
            now=self._clock(),
            lease=timedelta(seconds=self._settings.lease_seconds),
            limit=room,
            skip_providers=self._breaker.open_providers(),
            notifications=self._signing_keys is not None,
        )
        if claimed:
            providers = (
                await asyncio.to_thread(self._load_providers)
                if any(isinstance(message, outbox.ClaimedMessage) for message in claimed)
                else {}
            )
            for message in claimed:
                task = asyncio.create_task(
                    self._notify(message)
                    if isinstance(message, outbox.ClaimedNotification)
                    else self._send(message, providers.get(message.provider_ods))
                )
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
        return claimed

    async def _record(self, write: Callable[..., T], claimed: Any, **values: Any) -> T:
        """Record what became of a claimed message, if this dispatcher still holds its lease."""
        return await self._writer.run(partial(write, claimed=claimed, owner=self.owner, **values))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._send_finished.set()

    def _load_providers(self) -> dict[str, Provider]:
        with self._db.read() as session:
            return {provider.ods_code: provider for provider in list_providers(session)}

    def _adapter_for(self, provider: Provider) -> Adapter:
        fingerprint = (provider.adapter, repr(sorted(provider.settings.items())))
        cached = self._adapters.get(provider.ods_code)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        adapter = create_adapter(provider.adapter, dict(provider.settings))
        if cached is not None:
            asyncio.get_running_loop().create_task(cached[1].aclose())
        self._adapters[provider.ods_code] = (fingerprint, adapter)
        return adapter

    async def _send(self, message: outbox.ClaimedMessage, provider: Provider | None) -> None:
        bound = log.bind(
            outbox_id=message.outbox_id,
            prescription_id=message.prescription_id,
            provider=message.provider_ods,
            attempt=message.attempts + 1,
        )
        if provider is None:
            await self._retry_later(message, "provider is no longer registered", None, bound)
            return
        try:
            adapter = self._adapter_for(provider)
        except AdapterRegistryError as exc:
            # Retried: an operator can fix the provider's settings and the message still goes.
            bound.error("provider_adapter_unusable", problem=str(exc)[:200])
            await self._retry_later(message, str(exc), None, bound)
            return
        order = Order(
            kind=message.kind,
            prescription_id=message.prescription_id,
            short_form_id=message.short_form_id,
            tenant_ods=message.tenant_ods,
            provider_ods=message.provider_ods,
            message=message.body,
            request_id=message.request_id,
            correlation_id=message.prescription_id,
        )
        try:
            result = await adapter.send(order, idempotency_key=message.idempotency_key)
        except AdapterTransportError as exc:
            if exc.credentials_problem:
                bound.warning("provider_refused_credentials", reason=exc.reason[:200])
            await self._retry_later(message, exc.reason, exc.retry_after, bound)
            return
        except Exception as exc:  # noqa: BLE001  (an adapter bug must not lose the message: retry it)
            await self._retry_later(message, f"adapter error {type(exc).__name__}", None, bound)
            return
        self._breaker.record_success(message.provider_ods)
        BREAKER_OPEN.labels(provider=message.provider_ods).set(0)
        now = self._clock()
        if not result.is_delivered:
            SENDS.labels(provider=message.provider_ods, outcome="rejected").inc()
            recorded = await self._record(
                outbox.record_rejected,
                message,
                now=now,
                reason=result.reason or "rejected by the provider",
                code=result.code,
                notify=self._status_listener,
            )
            bound.info("order_rejected_by_provider", recorded=recorded)
        else:
            SENDS.labels(provider=message.provider_ods, outcome="delivered").inc()
            recorded = await self._record(
                outbox.record_delivered, message, now=now, notify=self._status_listener
            )
            bound.info("order_delivered", recorded=recorded)

    async def _retry_later(
        self, message: outbox.ClaimedMessage, reason: str, retry_after: float | None, bound: Any
    ) -> None:
        self._breaker.record_failure(message.provider_ods)
        BREAKER_OPEN.labels(provider=message.provider_ods).set(
            1 if self._breaker.state(message.provider_ods) == "open" else 0
        )
        delay = self._settings.retry.next_delay(message.attempts + 1, self._rng, retry_after=retry_after)
        now = self._clock()
        retry_at = None if delay is None else now + delay
        SENDS.labels(provider=message.provider_ods, outcome="dead" if retry_at is None else "retry").inc()
        await self._record(
            outbox.record_failure,
            message,
            now=now,
            error=reason,
            retry_at=retry_at,
            notify=self._status_listener,
        )
        if delay is None:
            bound.error("order_undeliverable", reason=reason[:200])
        else:
            bound.warning(
                "send_failed_will_retry", reason=reason[:200], retry_in=round(delay.total_seconds(), 2)
            )

    def _rest_hook_sender(self) -> delivery.RestHookSender:
        if self._rest_hooks is None:
            assert self._signing_keys is not None, "notifications are only claimed with signing keys"
            self._rest_hooks = delivery.RestHookSender(
                self._signing_keys, timeout_seconds=self._settings.notification_timeout_seconds
            )
        return self._rest_hooks

    async def _notify(self, notification: outbox.ClaimedNotification) -> None:
        # Never the endpoint or the headers in a log line: either may carry the subscriber's secrets.
        bound = log.bind(
            outbox_id=notification.outbox_id,
            subscription_id=notification.subscription_id,
            prescription_id=notification.prescription_id,
            attempt=notification.attempts + 1,
        )
        if notification.subscription_status != ACTIVE:
            NOTIFICATIONS.labels(outcome="dropped").inc()
            await self._record(delivery.record_dropped, notification, now=self._clock())
            bound.info("notification_dropped", subscription_status=notification.subscription_status)
            return
        try:
            result = await self._rest_hook_sender().post(notification)
        except Exception as exc:  # noqa: BLE001  (a signing or client bug must not lose the notification)
            result = delivery.DeliveryResult(delivered=False, error=f"gateway error {type(exc).__name__}")
        now = self._clock()
        if result.delivered:
            NOTIFICATIONS.labels(outcome="delivered").inc()
            recorded = await self._record(delivery.record_notified, notification, now=now)
            bound.info("notification_delivered", recorded=recorded)
            return
        error = result.error or "not delivered"
        delay = self._settings.retry.next_delay(
            notification.attempts + 1, self._rng, retry_after=result.retry_after
        )
        outcome = await self._record(
            delivery.record_not_notified,
            notification,
            now=now,
            error=error,
            retry_at=None if delay is None else now + delay,
            error_after=self._settings.subscription_error_after,
        )
        NOTIFICATIONS.labels(
            outcome="dead" if outcome is delivery.FailureOutcome.SUBSCRIPTION_ERROR else "retry"
        ).inc()
        if outcome is delivery.FailureOutcome.SUBSCRIPTION_ERROR:
            bound.error("subscription_in_error", reason=error[:200])
        elif delay is not None:
            bound.warning(
                "notification_failed_will_retry", reason=error[:200], retry_in=round(delay.total_seconds(), 2)
            )

    async def aclose(self) -> None:
        adapters = [adapter for _, adapter in self._adapters.values()]
        self._adapters.clear()
        for adapter in adapters:
            await adapter.aclose()
        if self._rest_hooks is not None:
            rest_hooks, self._rest_hooks = self._rest_hooks, None
            await rest_hooks.aclose()
        writer, self._writer = self._writer, BatchWriter(self._db)  # ready should it run again
        await asyncio.to_thread(writer.close)
