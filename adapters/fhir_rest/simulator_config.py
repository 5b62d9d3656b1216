"""How the FHIR REST provider simulator behaves: set at start, changed at runtime through its control API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from adapters.fhir_rest.status_tasks import TASK_STATUS

_SECRETS = frozenset({"required_token", "client_secret", "status_token"})


class SimulatorConfig(BaseModel):
    """Every knob of the simulator. Transport settings apply to the next request; lifecycle settings to
    orders accepted afterwards (an order's path is planned when it is accepted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ods: str = Field(default="VNCEL", pattern=r"^[A-Z0-9]{3,12}$", description="The provider's ODS code")
    seed: int = Field(default=0, description="Seed of every random choice, so runs repeat")

    # Transport: how $process-message answers.
    down: bool = Field(default=False, description="Answer 503 to everything but the control API")
    fail_next: int = Field(default=0, ge=0, description="Answer the next N orders with 500")
    throttle_next: int = Field(default=0, ge=0, description="Answer the next N orders with 429")
    retry_after_seconds: int = Field(default=1, ge=0, description="Retry-After sent with 429")
    delay_seconds: float = Field(default=0.0, ge=0, le=600, description="Wait this long before answering")
    reject_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of new orders refused at once (422 with a reason)"
    )
    required_token: str | None = Field(default=None, description="Accept this static bearer token")
    client_id: str | None = Field(default=None, description="Enables POST /oauth2/token for this client")
    client_secret: str | None = None
    token_lifetime_seconds: int = Field(default=300, ge=1)
    forbidden: bool = Field(default=False, description="Answer 403 to authenticated orders")

    # Lifecycle: what happens to accepted orders.
    lifecycle: bool = Field(default=True, description="Move accepted orders through the lifecycle")
    step_delay_seconds: float = Field(default=2.0, ge=0, description="Wait before each status change")
    step_delays: dict[str, float] = Field(
        default_factory=dict, description="Per-status waits overriding step_delay_seconds"
    )
    lifecycle_reject_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of items rejected after review"
    )
    query_rate: float = Field(default=0.0, ge=0, le=1, description="Share of accepted items queried")
    query_answer_seconds: float | None = Field(
        default=None,
        ge=0,
        description="How long a raised query stays open before the provider carries on as if answered "
        "(default: the accepted step's delay); the demo keeps queries open for a person to answer",
    )
    delivery_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="Chance that a delivery attempt fails"
    )
    max_delivery_attempts: int = Field(default=3, ge=1, le=10)

    # Status out: where the Tasks go.
    status_url: HttpUrl | None = Field(
        default=None, description="POST each status Task here; without it they are only logged"
    )
    status_token: str | None = Field(default=None, description="Bearer token for status_url")
    status_retry_attempts: int = Field(default=5, ge=1, le=20)
    status_retry_seconds: float = Field(default=0.5, ge=0, description="First backoff; doubles each retry")

    @field_validator("step_delays")
    @classmethod
    def _known_statuses(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TASK_STATUS))
        if unknown:
            raise ValueError(f"unknown statuses {unknown}; choose from {sorted(TASK_STATUS)}")
        if any(delay < 0 for delay in value.values()):
            raise ValueError("delays cannot be negative")
        return value

    def delay_for(self, status: str) -> float:
        return self.step_delays.get(status, self.step_delay_seconds)

    def updated(self, changes: dict[str, Any]) -> SimulatorConfig:
        """A validated copy with `changes` applied."""
        return SimulatorConfig.model_validate({**dict(self), **changes})

    def public(self) -> dict[str, Any]:
        """The settings as JSON, secrets replaced by whether they are set."""
        shown = self.model_dump(mode="json", exclude=set(_SECRETS))
        shown.update({f"{name}_set": getattr(self, name) is not None for name in sorted(_SECRETS)})
        return shown
