"""How the FHIR REST provider simulator behaves: set at start, changed at runtime through its control API."""

from __future__ import annotations

from typing import Any

from pydantic import Field, HttpUrl

from adapters.simulation.lifecycle import LifecycleSettings

_SECRETS = frozenset({"required_token", "client_secret", "status_token"})


class SimulatorConfig(LifecycleSettings):
    """Every knob of the simulator. Transport settings apply to the next request; lifecycle settings to
    orders accepted afterwards (an order's path is planned when it is accepted)."""

    # Transport: how $process-message answers.
    down: bool = Field(default=False, description="Answer 503 to everything but the control API")
    fail_next: int = Field(default=0, ge=0, description="Answer the next N orders with 500")
    throttle_next: int = Field(default=0, ge=0, description="Answer the next N orders with 429")
    retry_after_seconds: int = Field(default=1, ge=0, description="Retry-After sent with 429")
    delay_seconds: float = Field(default=0.0, ge=0, le=600, description="Wait this long before answering")
    required_token: str | None = Field(default=None, description="Accept this static bearer token")
    client_id: str | None = Field(default=None, description="Enables POST /oauth2/token for this client")
    client_secret: str | None = None
    token_lifetime_seconds: int = Field(default=300, ge=1)
    forbidden: bool = Field(default=False, description="Answer 403 to authenticated orders")

    # Status out: where the Tasks go.
    status_url: HttpUrl | None = Field(
        default=None, description="POST each status Task here; without it they are only logged"
    )
    status_token: str | None = Field(default=None, description="Bearer token for status_url")
    status_retry_attempts: int = Field(default=5, ge=1, le=20)
    status_retry_seconds: float = Field(default=0.5, ge=0, description="First backoff; doubles each retry")

    def public(self) -> dict[str, Any]:
        """The settings as JSON, secrets replaced by whether they are set."""
        shown = self.model_dump(mode="json", exclude=set(_SECRETS))
        shown.update({f"{name}_set": getattr(self, name) is not None for name in sorted(_SECRETS)})
        return shown
