"""The business status of a prescription (DESIGN.md sections 4 and 10): codes, transitions, ordering.

Pure rules, no storage: `apply_update` decides what one status update does to a line item, and
`prescription_status` derives the prescription's status from its items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

STATUS_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status"


class Status(StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    QUERY = "query"
    IN_PREPARATION = "in-preparation"
    DISPENSED = "dispensed"
    DELIVERY_SCHEDULED = "delivery-scheduled"
    OUT_FOR_DELIVERY = "out-for-delivery"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery-failed"
    CANCEL_REQUESTED = "cancel-requested"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNDELIVERABLE = "undeliverable"


S = Status

# The `source` of the events the gateway records itself (a provider's are `provider:<ODS>`).
GATEWAY_SOURCE = "gateway"

DEFINITIONS: Mapping[Status, str] = {
    S.RECEIVED: "Validated and stored by the gateway",
    S.QUEUED: "Waiting to be sent to the provider, or retrying",
    S.SENT: "The provider's system took it (transport acknowledgement)",
    S.ACCEPTED: "The provider accepted the order for fulfilment",
    S.REJECTED: "The provider declined it, with a coded reason",
    S.QUERY: "The provider needs the trust to answer a query (on hold)",
    S.IN_PREPARATION: "Clinically checked and being dispensed",
    S.DISPENSED: "Dispensed",
    S.DELIVERY_SCHEDULED: "Delivery date and window agreed with the patient",
    S.OUT_FOR_DELIVERY: "On its way",
    S.DELIVERED: "Handed over",
    S.DELIVERY_FAILED: "A delivery attempt failed; can be rescheduled",
    S.CANCEL_REQUESTED: "The trust asked to cancel; waiting for the provider",
    S.CANCELLED: "Cancelled before dispatch",
    S.EXPIRED: "Validity period passed with nothing dispensed",
    S.UNDELIVERABLE: "The gateway could not reach the provider after its retries; people are alerted",
}

TERMINAL = frozenset({S.REJECTED, S.CANCELLED, S.EXPIRED, S.DELIVERED})
BEFORE_DISPENSED = frozenset(
    {S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.QUERY, S.IN_PREPARATION, S.UNDELIVERABLE}
)
NOT_YET_AT_PROVIDER = frozenset({S.RECEIVED, S.QUEUED, S.UNDELIVERABLE})

_NEXT: Mapping[Status, frozenset[Status]] = {
    S.RECEIVED: frozenset({S.QUEUED}),
    # A 4xx from the provider's system at send time is a refusal with its reason.
    S.QUEUED: frozenset({S.SENT, S.UNDELIVERABLE, S.REJECTED}),
    S.UNDELIVERABLE: frozenset({S.QUEUED}),
    S.SENT: frozenset({S.ACCEPTED, S.REJECTED, S.QUERY}),
    S.ACCEPTED: frozenset({S.IN_PREPARATION, S.DISPENSED, S.QUERY, S.REJECTED}),
    S.IN_PREPARATION: frozenset({S.DISPENSED, S.QUERY}),
    S.DISPENSED: frozenset({S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY, S.DELIVERED}),
    S.DELIVERY_SCHEDULED: frozenset({S.OUT_FOR_DELIVERY, S.DELIVERED, S.DELIVERY_FAILED}),
    S.OUT_FOR_DELIVERY: frozenset({S.DELIVERED, S.DELIVERY_FAILED}),
    S.DELIVERY_FAILED: frozenset({S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY}),
}

# How far along the lifecycle a status is: the prescription shows its least advanced item.
_PROGRESS: Mapping[Status, int] = {
    S.RECEIVED: 0,
    S.QUEUED: 1,
    S.UNDELIVERABLE: 1,
    S.SENT: 2,
    S.QUERY: 3,
    S.CANCEL_REQUESTED: 3,
    S.ACCEPTED: 4,
    S.IN_PREPARATION: 5,
    S.DISPENSED: 6,
    S.DELIVERY_FAILED: 7,
    S.DELIVERY_SCHEDULED: 7,
    S.OUT_FOR_DELIVERY: 8,
    S.REJECTED: 9,
    S.CANCELLED: 9,
    S.EXPIRED: 9,
    S.DELIVERED: 10,
}


class IllegalTransition(Exception):  # noqa: N818  (a domain refusal, named for what it is)
    def __init__(self, current: Status, requested: Status) -> None:
        super().__init__(f"cannot go from '{current}' to '{requested}'")
        self.current = current
        self.requested = requested


@dataclass(frozen=True, slots=True)
class ItemState:
    """What the gateway knows of one line item's status."""

    status: Status
    # The status a query or a cancel request interrupted: where it returns to.
    resume: Status | None = None


class Verdict(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    REFUSED = "refused"


def allowed_next(state: ItemState) -> frozenset[Status]:
    """Every status `state` may move to."""
    current = state.status
    nexts = set(_NEXT.get(current, frozenset()))
    if current == S.QUERY:
        # Answered: back to the status it interrupted, or on from there (the provider may report
        # the next step at once); or the provider declines the order.
        nexts.add(S.REJECTED)
        if state.resume is not None:
            nexts.add(state.resume)
            nexts.update(_NEXT.get(state.resume, frozenset()) - {S.QUERY})
    if current == S.CANCEL_REQUESTED:
        nexts.add(S.CANCELLED)
        if state.resume is not None:
            nexts.add(state.resume)
    if current in BEFORE_DISPENSED:
        nexts.update({S.CANCEL_REQUESTED, S.EXPIRED})
    if current in NOT_YET_AT_PROVIDER:
        nexts.add(S.CANCELLED)
    return frozenset(nexts)


def step(state: ItemState, requested: Status) -> ItemState:
    """One transition, or `IllegalTransition`."""
    if requested not in allowed_next(state):
        raise IllegalTransition(state.status, requested)
    resume = state.resume
    if requested in (S.QUERY, S.CANCEL_REQUESTED):
        resume = state.status
    elif state.status in (S.QUERY, S.CANCEL_REQUESTED):
        resume = None
    return replace(state, status=requested, resume=resume)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One reported change: what, when it happened (`lastModified`), who said so, arrival order."""

    status: Status
    occurred_at: datetime
    source: str
    sequence: int


def derive(start: ItemState, updates: Iterable[StatusUpdate]) -> tuple[ItemState, dict[int, Verdict]]:
    """Replay updates in the order they happened (not the order they arrived).

    Each update gets a verdict: applied; duplicate (the status it reports is already the status);
    refused (illegal where it falls in time). Arrival order therefore never changes the outcome.
    """
    state = start
    verdicts: dict[int, Verdict] = {}
    for update in sorted(updates, key=lambda u: (u.occurred_at, u.sequence)):
        if update.status == state.status:
            verdicts[update.sequence] = Verdict.DUPLICATE
            continue
        try:
            state = step(state, update.status)
        except IllegalTransition:
            verdicts[update.sequence] = Verdict.REFUSED
            continue
        verdicts[update.sequence] = Verdict.APPLIED
    return state, verdicts


def admit_update(
    start: ItemState, history: Iterable[StatusUpdate], update: StatusUpdate
) -> tuple[ItemState, Verdict]:
    """What a new update does given the item's earlier updates: the new state and its verdict.

    An update older than the newest one already applied from the same source is kept as
    superseded (it may still fill a gap in the history); an update that is illegal where it falls
    raises `IllegalTransition` naming the current and the requested status.
    """
    earlier = [u for u in history if u.sequence != update.sequence]
    current, earlier_verdicts = derive(start, earlier)
    state, verdicts = derive(start, [*earlier, update])
    verdict = verdicts[update.sequence]
    if verdict is Verdict.REFUSED:
        raise IllegalTransition(current.status, update.status)
    newest_applied = max(
        (
            u.occurred_at
            for u in earlier
            if u.source == update.source and earlier_verdicts.get(u.sequence) is Verdict.APPLIED
        ),
        default=None,
    )
    if verdict is Verdict.APPLIED and newest_applied is not None and update.occurred_at < newest_applied:
        verdict = Verdict.SUPERSEDED
    return state, verdict


@dataclass(frozen=True, slots=True)
class PrescriptionStatus:
    status: Status
    partial: bool


def prescription_status(items: Iterable[Status]) -> PrescriptionStatus:
    """The least advanced item's status, flagged partial when the items differ."""
    statuses = list(items)
    if not statuses:
        raise ValueError("a prescription has at least one item")
    least = min(statuses, key=lambda status: (_PROGRESS[status], status.value))
    return PrescriptionStatus(least, partial=len(set(statuses)) > 1)


# Line item statuses that need the trust's attention, most urgent first: the prescription keeps the
# first one any of its items is in, so the clinician worklist finds them without reading every item.
ATTENTION = (S.QUERY, S.DELIVERY_FAILED, S.UNDELIVERABLE, S.REJECTED)


def attention_status(items: Iterable[Status]) -> Status | None:
    present = set(items)
    return next((status for status in ATTENTION if status in present), None)


def task_status(status: Status) -> str:
    """The FHIR `Task.status` that goes with a business status."""
    return {
        S.RECEIVED: "received",
        S.QUEUED: "ready",
        S.UNDELIVERABLE: "failed",
        S.SENT: "requested",
        S.ACCEPTED: "accepted",
        S.REJECTED: "rejected",
        S.QUERY: "on-hold",
        S.IN_PREPARATION: "in-progress",
        S.DISPENSED: "in-progress",
        S.DELIVERY_SCHEDULED: "in-progress",
        S.OUT_FOR_DELIVERY: "in-progress",
        S.DELIVERY_FAILED: "in-progress",
        S.CANCEL_REQUESTED: "in-progress",
        S.DELIVERED: "completed",
        S.CANCELLED: "cancelled",
        S.EXPIRED: "cancelled",
    }[status]


def medication_request_status(status: Status) -> str:
    """The `MedicationRequest.status` derived from a business status."""
    if status == S.DELIVERED:
        return "completed"
    if status == S.EXPIRED:
        return "stopped"
    if status in (S.CANCELLED, S.REJECTED):
        return "cancelled"
    if status == S.QUERY:
        return "on-hold"
    return "active"
