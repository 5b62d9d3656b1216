"""Settings of the `pull` adapter: nothing to connect to (the provider fetches its orders), only the rules
the gateway applies to orders waiting to be pulled."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from adapters.base import AdapterSettings


class PullSettings(AdapterSettings):
    """`lease_seconds`: how long an order a poller has fetched stays hidden from the provider's other
    pollers before it is offered again (if not acknowledged). `unpulled_alert_seconds`: an order still
    unacknowledged this long after it was queued raises the same alert as a failed push."""

    lease_seconds: int = Field(default=300, ge=10, le=86_400)
    unpulled_alert_seconds: int = Field(default=4 * 3600, ge=60, le=14 * 86_400)

    @model_validator(mode="after")
    def _alert_after_a_lease(self) -> Self:
        if self.unpulled_alert_seconds <= self.lease_seconds:
            raise ValueError("unpulled_alert_seconds must be longer than lease_seconds")
        return self
