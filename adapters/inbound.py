"""Status coming back from providers, in neutral values: the contract between an adapter's listener or
poller and the gateway.

Every protocol (an HL7 v2 message over MLLP, a row of a status file, ...) is parsed by its adapter
into `ProviderReport`s, one per line item, grouped in one `InboundMessage` with the bytes as
received and a key that identifies the message for de-duplication. The adapter hands the message to
a `ReportSink`, an async callable the gateway supplies, and answers the provider from the `Ack`:

    ack = await store_report(message)     # the gateway stores the message, then applies it
    # STORED or DUPLICATE -> the provider is told "taken" (HL7 AA, file moved to done/)
    # REFUSED             -> "not taken, do not resend as is" (HL7 AE, file moved to error/)
    # UNAVAILABLE         -> "not taken, try again" (HL7 AR, file left where it is)

The sink is where "store before acknowledging" happens: it returns only once the message is
durably kept (or known to be a duplicate), so an acknowledgement never covers something that a
crash could lose. The adapter never writes a status or a table itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from fhir_profiles.identifiers import is_short_form_id_shaped
from fhir_profiles.status_task import PROVIDER_STATUSES, RESPONSIBLE_PARTIES

_MAX_TEXT = 500


class ReportKind(StrEnum):
    STATUS = "status"
    """The item moved to `status`."""
    CANCEL_REFUSED = "cancel-refused"
    """The provider will not cancel the item (it goes back to where it was); `status` is None."""


@dataclass(frozen=True, slots=True)
class DeliveryWindow:
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class DispenseDetail:
    """What was dispensed for one item, as far as the provider said."""

    medication_code: str | None = None
    medication_display: str | None = None
    quantity: str | None = None
    """A decimal as the provider wrote it (kept as text so nothing is rounded)."""
    unit: str | None = None
    batch: str | None = None
    expiry: str | None = None
    """An ISO 8601 date."""


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """One thing a provider says about one line item of one prescription."""

    short_form_id: str
    item_identifier: str
    """The trust's line item identifier (`prescription-order-item-number`), as sent in the order."""
    status: str | None
    """A homecare-status code a provider may report (`fhir_profiles.status_task.PROVIDER_STATUSES`)."""
    occurred_at: datetime
    """When it happened at the provider (timezone-aware): the order in which reports are applied."""
    kind: ReportKind = ReportKind.STATUS
    reason_code: str | None = None
    reason_text: str | None = None
    responsible_party: str | None = None
    """Who caused a failed delivery, a rejection or a query: patient, trust, provider or courier."""
    delivery_window: DeliveryWindow | None = None
    delivery_attempt: int | None = None
    dispense: DispenseDetail | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message from one provider: what the gateway stores, de-duplicates and applies as a unit."""

    scheme: str
    """The adapter it came through (`hl7v2-mllp`, `csv-drop`, ...)."""
    provider_ods: str
    """The provider, as authenticated by the adapter (never only as the message claims)."""
    dedupe_key: str
    """Identifies the message among everything this provider ever sent: a repeat carries the same key
    and must be acknowledged without being applied again."""
    reports: tuple[ProviderReport, ...]
    raw: bytes = field(repr=False)
    """The bytes as received (they may carry patient data: never logged)."""
    peer: str | None = None
    """Where it came from (address or file name), for the audit."""


class AckOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Ack:
    """The gateway's answer to one `InboundMessage`."""

    outcome: AckOutcome
    reason: str | None = None
    code: str | None = None

    @classmethod
    def stored(cls) -> Ack:
        """Kept durably (and applied, or queued to be): the provider may forget it."""
        return cls(AckOutcome.STORED)

    @classmethod
    def duplicate(cls) -> Ack:
        """Seen before under the same `dedupe_key`: acknowledged, not applied again."""
        return cls(AckOutcome.DUPLICATE)

    @classmethod
    def refused(cls, reason: str, code: str | None = None) -> Ack:
        """Not taken for good (e.g. another provider's prescription, an unknown item, an illegal
        transition): resending the same message will not help."""
        return cls(AckOutcome.REFUSED, reason=reason[:_MAX_TEXT], code=code)

    @classmethod
    def unavailable(cls, reason: str) -> Ack:
        """Not taken now (e.g. the database is unreachable): the provider should send it again."""
        return cls(AckOutcome.UNAVAILABLE, reason=reason[:_MAX_TEXT])

    @property
    def taken(self) -> bool:
        return self.outcome in (AckOutcome.STORED, AckOutcome.DUPLICATE)


class ReportSink(Protocol):
    """Supplied by the gateway: store the message (before any acknowledgement), then apply it."""

    async def __call__(self, message: InboundMessage) -> Ack: ...


class StatusSource(Protocol):
    """A listener or a poller through which providers' status comes in, handing each message to a
    `ReportSink`. The gateway opens it, then serves it until `stop` is set; it releases everything
    (sockets, connections) before `serve` returns."""

    async def open(self) -> str:
        """Start taking status (bind a port...); returns where it takes status from, for the logs."""
        ...

    async def serve(self, stop: asyncio.Event) -> None: ...


@dataclass(frozen=True, slots=True)
class StatusPoller:
    """A provider's status poller, and what it polls: a process runs one poller per `key` (one folder
    is read by one poller, whichever providers name it)."""

    key: str
    source: StatusSource


class InboundFormatError(ValueError):
    """The provider's bytes cannot be read as status reports; `reason` says why, for the provider."""

    def __init__(self, reason: str, *, location: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason[:_MAX_TEXT]
        self.location = location


def checked_report(report: ProviderReport, *, location: str | None = None) -> ProviderReport:
    """`report` if it is one a provider may send; otherwise `InboundFormatError` saying what is wrong."""

    def wrong(reason: str) -> InboundFormatError:
        return InboundFormatError(reason, location=location)

    if not is_short_form_id_shaped(report.short_form_id):
        raise wrong(f"'{report.short_form_id[:40]}' is not a short-form prescription ID")
    if not report.item_identifier:
        raise wrong("the line item identifier is missing")
    if report.kind is ReportKind.STATUS and report.status not in PROVIDER_STATUSES:
        raise wrong(
            f"'{str(report.status)[:40]}' is not a status a provider reports; "
            f"expected one of {', '.join(sorted(PROVIDER_STATUSES))}"
        )
    if report.occurred_at.tzinfo is None:
        raise wrong("the time of the status has no timezone offset")
    if report.responsible_party is not None and report.responsible_party not in RESPONSIBLE_PARTIES:
        raise wrong(
            f"'{report.responsible_party[:40]}' is not a responsible party; "
            f"expected one of {', '.join(sorted(RESPONSIBLE_PARTIES))}"
        )
    window = report.delivery_window
    if window is not None and window.end < window.start:
        raise wrong("the delivery window ends before it starts")
    return report
