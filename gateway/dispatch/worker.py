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
from datetime import timedelta
from typing import Any

from auth.signing import SigningKeys
from gateway.clock import Clock
from gateway.dispatch.policy import CircuitBreaker
from gateway.dispatch.provider_channel import ProviderChannel
from gateway.dispatch.settings import DispatcherSettings
from gateway.domain.delivery import DeliveryChannel, DeliveryOutcome, OutcomeKind, Recorded
from gateway.domain.status_authority import StatusListener
from gateway.logs import get_logger
from gateway.metrics import BREAKER_OPEN
from gateway.notify.endpoints import EndpointPolicy
from gateway.notify.rest_hook import RestHookChannel
from gateway.store import outbox
from gateway.store.db import Database
from gateway.store.outbox import Claimed, ClaimedMessage, ClaimedNotification
from gateway.store.writer import BatchWriter

log = get_logger("gateway.dispatch")


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
        self._settings = settings or DispatcherSettings()
        self._doorbell = doorbell or Doorbell()
        self._rng = random.Random(seed)  # noqa: S311  (jitter, not security)
        self._breaker = CircuitBreaker(
            threshold=self._settings.breaker_threshold, cooldown=self._settings.breaker_cooldown_seconds
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._in_flight: set[asyncio.Task[None]] = set()
        self._send_finished = asyncio.Event()
        self._channels: dict[type[Any], DeliveryChannel[Any]] = {
            ClaimedMessage: ProviderChannel(db, listener=on_status_change)
        }
        if signing_keys is not None:
            self._channels[ClaimedNotification] = RestHookChannel(
                signing_keys,
                timeout_seconds=self._settings.notification_timeout_seconds,
                error_after=self._settings.subscription_error_after,
                endpoints=EndpointPolicy(allow_loopback=self._settings.allow_loopback_subscribers),
            )
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

    async def _claim(self) -> list[Claimed]:
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
            notifications=ClaimedNotification in self._channels,
        )
        for kind, channel in self._channels.items():
            await channel.prepare([message for message in claimed if isinstance(message, kind)])
        for message in claimed:
            task = asyncio.create_task(self._deliver(self._channels[type(message)], message))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return claimed

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._send_finished.set()

    async def _deliver(self, channel: DeliveryChannel[Any], message: Claimed) -> None:
        # Never a message's body, endpoint or headers in a log line: they carry patient data or secrets.
        bound = log.bind(
            channel=channel.name,
            outbox_id=message.outbox_id,
            prescription_id=message.prescription_id,
            attempt=message.attempts + 1,
        )
        outcome = await channel.deliver(message)
        destination = channel.destination(message)
        retry_at = None
        if outcome.kind is OutcomeKind.FAILED:
            if destination is not None:
                self._breaker.record_failure(destination)
            delay = self._settings.retry.next_delay(
                message.attempts + 1, self._rng, retry_after=outcome.retry_after
            )
            retry_at = None if delay is None else self._clock() + delay
        elif destination is not None and outcome.kind is not OutcomeKind.HELD:
            # A message held for a provider that pulls it went nowhere: it says nothing of the provider.
            self._breaker.record_success(destination)
        if destination is not None:
            BREAKER_OPEN.labels(provider=destination).set(
                1 if self._breaker.state(destination) == "open" else 0
            )
        now = self._clock()
        recorded = await self._writer.run(
            lambda tx: channel.record(tx, message, outcome, owner=self.owner, now=now, retry_at=retry_at)
        )
        channel.observe(message, recorded)
        retry_in = None if retry_at is None else round((retry_at - now).total_seconds(), 2)
        _log_outcome(channel, bound, outcome, recorded, retry_in=retry_in)

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.aclose()
        writer, self._writer = self._writer, BatchWriter(self._db)  # ready should it run again
        await asyncio.to_thread(writer.close)


def _log_outcome(
    channel: DeliveryChannel[Any],
    bound: Any,
    outcome: DeliveryOutcome,
    recorded: Recorded,
    *,
    retry_in: float | None,
) -> None:
    event = channel.log_events.get(recorded, f"delivery_{recorded.value}")
    reason = (outcome.reason or "")[:200] or None
    if recorded is Recorded.RETRY:
        bound.warning(event, reason=reason, retry_in=retry_in)
    elif recorded is Recorded.DEAD:
        bound.error(event, reason=reason)
    else:
        bound.info(event, reason=reason)
