"""The adapter interface: how the gateway hands an order to a homecare provider's protocol.

An adapter takes an `Order`, sends it in its provider's protocol and answers with a `SendResult`
(the provider's system took it, or refused it for good) or raises `AdapterTransportError` (try again
later). The gateway's dispatcher owns retries, backoff, circuit breaking and the status it records;
an adapter only says what happened to one attempt.

Adapters are found through the entry-point group `homecare_gateway.adapters` (see
`adapters.registry`), so a provider's adapter can ship as its own package. An adapter class:

- sets `scheme` to its entry-point name (hyphenated: `fhir-rest`, `hl7v2-mllp`, `csv-drop`, `pull`);
- sets `config_model` to a pydantic model of its per-provider settings that forbids unknown keys
  (subclass `AdapterSettings`);
- is constructed with one argument, an instance of that model;
- belongs to one event loop: the gateway creates it, calls `send` and `check` from that loop, and
  calls `aclose` once when the provider's settings change or the process stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

OrderKind = Literal["new", "cancel"]


@dataclass(frozen=True, slots=True)
class Order:
    """One message for one provider: a new prescription or a request to cancel one."""

    kind: OrderKind
    prescription_id: str
    """The gateway's id (a UUID) of the prescription."""
    short_form_id: str
    """The short-form prescription ID (`XXXXXX-XXXXXX-XXXXXC`)."""
    tenant_ods: str
    """The sending trust's ODS code."""
    provider_ods: str
    message: bytes = field(repr=False)
    """The trust's message Bundle exactly as received: what was signed, never a re-serialisation.
    Left out of the repr because it carries patient data."""
    request_id: str | None = None
    correlation_id: str | None = None


class SendOutcome(StrEnum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one send that reached the provider.

    `delivered`: the provider's system took the order (a transport acknowledgement; the gateway
    records `sent`, and acceptance comes later as a status update). `rejected`: a permanent refusal;
    the gateway records `rejected` with `reason` (and `code`, when the provider gave one).

    `answer_follows` (with `delivered`): the protocol's acknowledgement only says the message
    arrived, so the provider's answer to a cancellation (cancelled, or refused) comes later as a
    status report; without it, a delivered cancellation is agreed at once (`fhir-rest`).

    `held`: nothing went on the wire because the provider fetches its orders itself (`pull`): the
    order stays `queued`, visible to the provider, until the provider acknowledges it.
    """

    outcome: SendOutcome
    detail: str = ""
    reason: str | None = None
    code: str | None = None
    answer_follows: bool = False

    @classmethod
    def delivered(cls, detail: str = "", *, answer_follows: bool = False) -> SendResult:
        return cls(SendOutcome.DELIVERED, detail=detail, answer_follows=answer_follows)

    @classmethod
    def held_for_pull(cls, detail: str = "") -> SendResult:
        return cls(SendOutcome.HELD, detail=detail)

    @classmethod
    def rejected(cls, reason: str, code: str | None = None) -> SendResult:
        return cls(SendOutcome.REJECTED, detail=reason, reason=reason, code=code)

    @property
    def is_delivered(self) -> bool:
        return self.outcome is SendOutcome.DELIVERED


class AdapterTransportError(Exception):
    """A failure worth retrying: the provider could not be reached or did not take the order yet.

    `credentials_problem` is set when the provider refused our credentials (HTTP 401/403 or the
    token endpoint said no): still retried, and the gateway raises a credentials alert.
    `retry_after` is the provider's own hint in seconds (e.g. from `Retry-After`), when it gave one.
    """

    def __init__(
        self,
        reason: str,
        *,
        credentials_problem: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.credentials_problem = credentials_problem
        self.retry_after = retry_after
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Health:
    """The answer to "can this provider be reached with these settings?"."""

    ok: bool
    detail: str


class AdapterSettings(BaseModel):
    """Base for an adapter's `config_model`: unknown keys are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Adapter(Protocol):
    """A provider protocol. See the module docstring for the rules every adapter follows."""

    scheme: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    def __init__(self, config: Any) -> None: ...

    async def send(self, order: Order, *, idempotency_key: str) -> SendResult:
        """Send one order. The same `idempotency_key` is used for every attempt of the same order,
        so the provider can take it exactly once; raise `AdapterTransportError` to be retried."""
        ...

    async def check(self) -> Health:
        """Whether the provider can be reached with these settings; never raises."""
        ...

    async def aclose(self) -> None:
        """Release connections; the adapter is not used again."""
        ...


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None when
    absent or unreadable. The one parser, for adapters and the gateway's own HTTP deliveries alike."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
