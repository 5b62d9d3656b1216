"""The provider delivery channel: orders and cancellations through each provider's adapter.

Adapters are found through the registry by the provider's `adapter` scheme and kept per provider
until its settings change. A provider that is no longer registered, or whose adapter cannot be built
from its settings, is a retryable failure: an operator can fix it and the message still goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime

from adapters.base import Adapter, AdapterTransportError, Order, SendOutcome
from adapters.registry import AdapterRegistryError, create_adapter
from gateway.domain.delivery import DeliveryOutcome, Recorded, record_provider_outcome
from gateway.domain.status_authority import StatusListener
from gateway.logs import get_logger
from gateway.metrics import SENDS
from gateway.store.db import Database, Tx
from gateway.store.outbox import ClaimedMessage
from gateway.store.providers import RegisteredProvider, registered_providers

log = get_logger("gateway.dispatch")


class ProviderChannel:
    name = "provider"
    log_events: Mapping[Recorded, str] = {
        Recorded.DELIVERED: "order_delivered",
        Recorded.REFUSED: "order_rejected_by_provider",
        Recorded.RETRY: "send_failed_will_retry",
        Recorded.DEAD: "order_undeliverable",
        Recorded.HELD: "order_held_for_pull",
        Recorded.LEASE_LOST: "send_lease_lost",
    }

    def __init__(self, db: Database, *, listener: StatusListener | None) -> None:
        self._db = db
        self._listener = listener
        self._providers: dict[str, RegisteredProvider] = {}
        self._adapters: dict[str, tuple[tuple[str, str], Adapter]] = {}

    async def prepare(self, messages: Sequence[ClaimedMessage]) -> None:
        """The registry as it is now: settings changed by an operator apply from the next batch."""
        if messages:
            self._providers = await asyncio.to_thread(registered_providers, self._db)

    def destination(self, message: ClaimedMessage) -> str | None:
        return message.provider_ods

    async def deliver(self, message: ClaimedMessage) -> DeliveryOutcome:
        provider = self._providers.get(message.provider_ods)
        if provider is None:
            return DeliveryOutcome.failed("provider is no longer registered")
        try:
            adapter = self._adapter_for(provider)
        except AdapterRegistryError as exc:
            log.error("provider_adapter_unusable", provider=message.provider_ods, problem=str(exc)[:200])
            return DeliveryOutcome.failed(str(exc))
        try:
            result = await adapter.send(_order(message), idempotency_key=message.idempotency_key)
        except AdapterTransportError as exc:
            if exc.credentials_problem:
                log.warning(
                    "provider_refused_credentials", provider=message.provider_ods, reason=exc.reason[:200]
                )
            return DeliveryOutcome.failed(exc.reason, retry_after=exc.retry_after)
        except Exception as exc:  # noqa: BLE001  (an adapter bug must not lose the message: retry it)
            return DeliveryOutcome.failed(f"adapter error {type(exc).__name__}")
        if result.outcome is SendOutcome.HELD:
            return DeliveryOutcome.held(result.detail or "held for the provider to pull")
        if result.is_delivered:
            return DeliveryOutcome.delivered(answer_follows=result.answer_follows)
        return DeliveryOutcome.refused(result.reason or "rejected by the provider", result.code)

    def _adapter_for(self, provider: RegisteredProvider) -> Adapter:
        fingerprint = (provider.adapter, repr(sorted(provider.settings.items())))
        cached = self._adapters.get(provider.ods_code)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        adapter = create_adapter(provider.adapter, dict(provider.settings))
        if cached is not None:
            asyncio.get_running_loop().create_task(cached[1].aclose())
        self._adapters[provider.ods_code] = (fingerprint, adapter)
        return adapter

    def record(
        self,
        tx: Tx,
        message: ClaimedMessage,
        outcome: DeliveryOutcome,
        *,
        owner: str,
        now: datetime,
        retry_at: datetime | None,
    ) -> Recorded:
        return record_provider_outcome(
            tx, message, outcome, owner=owner, now=now, retry_at=retry_at, listener=self._listener
        )

    def observe(self, message: ClaimedMessage, recorded: Recorded) -> None:
        if recorded is not Recorded.LEASE_LOST:
            SENDS.labels(provider=message.provider_ods, outcome=recorded.value).inc()

    async def aclose(self) -> None:
        adapters = [adapter for _, adapter in self._adapters.values()]
        self._adapters.clear()
        for adapter in adapters:
            await adapter.aclose()


def _order(message: ClaimedMessage) -> Order:
    return Order(
        kind=message.kind,
        prescription_id=message.prescription_id,
        short_form_id=message.short_form_id,
        tenant_ods=message.tenant_ods,
        provider_ods=message.provider_ods,
        message=message.body,
        request_id=message.request_id,
        correlation_id=message.prescription_id,
    )
