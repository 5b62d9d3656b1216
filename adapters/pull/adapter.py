"""The `pull` adapter: for providers that cannot take connections, so fetch their orders from the gateway.

`send` puts nothing on the wire and answers `SendResult.held_for_pull`: the order stays `queued`,
visible to the provider's `GET /fhir/Task?owner=<ODS>&business-status=queued`, until the provider
acknowledges each item with a Task update (`accepted`, or `rejected` with a reason). The lease that keeps
two pollers apart and the alert for an order nobody pulls are the gateway's (see `PullSettings`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from adapters.base import Adapter, Health, Order, SendResult
from adapters.pull.settings import PullSettings


class PullAdapter:
    scheme: ClassVar[str] = "pull"
    config_model: ClassVar[type[BaseModel]] = PullSettings

    def __init__(self, config: PullSettings) -> None:
        self.config = config

    async def send(self, order: Order, *, idempotency_key: str) -> SendResult:
        kind = "order" if order.kind == "new" else "cancellation"
        return SendResult.held_for_pull(detail=f"{kind} held for {order.provider_ods} to pull")

    async def check(self) -> Health:
        return Health(ok=True, detail="nothing to reach: the provider pulls its orders")

    async def aclose(self) -> None:
        return None


if TYPE_CHECKING:
    _interface: type[Adapter] = PullAdapter
