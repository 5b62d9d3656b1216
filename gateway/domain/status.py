"""The business status of a line item (DESIGN.md §4 and §10): the transition table, who may make each
move, ordering by lastModified, the prescription's derived status and the published CodeSystem.

Pure rules, no storage. `gateway.domain.status_authority.change_status` is the one place that applies
them to an item; nothing else changes a status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from fhir_profiles.codes import HOMECARE_STATUS_SYSTEM, HomecareStatus

Status = HomecareStatus
S = Status
STATUS_SYSTEM = HOMECARE_STATUS_SYSTEM


class Actor(StrEnum):
    """Who makes a move: the gateway itself, the provider the order was routed to, or the trust."""

    GATEWAY = "gateway"
    PROVIDER = "provider"
    TRUST = "trust"


# The `source` of the events the gateway records itself (a provider's are `provider:<ODS>`).
GATEWAY_SOURCE = "gateway"


def provider_source(ods: str) -> str:
    return f"provider:{ods}"


def trust_source(ods: str) -> str:
    return f"trust:{ods}"


def actor_of(source: str) -> Actor:
    """The actor behind an event's `source` (`gateway`, `provider:<ODS>`, `trust:<ODS>`)."""
    return Actor(source.partition(":")[0])


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

_G, _P, _T = Actor.GATEWAY, Actor.PROVIDER, Actor.TRUST


def _table() -> Mapping[Status, Mapping[Status, frozenset[Actor]]]:
    moves: list[tuple[Status, Status, frozenset[Actor]]] = [
        (S.RECEIVED, S.QUEUED, frozenset({_G})),
        (S.QUEUED, S.SENT, frozenset({_G})),
        (S.QUEUED, S.UNDELIVERABLE, frozenset({_G})),
        # The provider's system refused the order when it was sent (a 4xx): rejected, with its reason.
        (S.QUEUED, S.REJECTED, frozenset({_G})),
        (S.UNDELIVERABLE, S.QUEUED, frozenset({_G})),  # re-driven by an operator
        (S.SENT, S.ACCEPTED, frozenset({_P})),
        (S.SENT, S.REJECTED, frozenset({_P, _G})),
        (S.SENT, S.QUERY, frozenset({_P})),
        (S.ACCEPTED, S.IN_PREPARATION, frozenset({_P})),
        (S.ACCEPTED, S.DISPENSED, frozenset({_P})),
        (S.ACCEPTED, S.QUERY, frozenset({_P})),
        (S.ACCEPTED, S.REJECTED, frozenset({_P})),
        (S.IN_PREPARATION, S.DISPENSED, frozenset({_P})),
        (S.IN_PREPARATION, S.QUERY, frozenset({_P})),
        (S.DISPENSED, S.DELIVERY_SCHEDULED, frozenset({_P})),
        (S.DISPENSED, S.OUT_FOR_DELIVERY, frozenset({_P})),
        (S.DISPENSED, S.DELIVERED, frozenset({_P})),
        (S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY, frozenset({_P})),
        (S.DELIVERY_SCHEDULED, S.DELIVERED, frozenset({_P})),
        (S.DELIVERY_SCHEDULED, S.DELIVERY_FAILED, frozenset({_P})),
        (S.OUT_FOR_DELIVERY, S.DELIVERED, frozenset({_P})),
        (S.OUT_FOR_DELIVERY, S.DELIVERY_FAILED, frozenset({_P})),
        (S.DELIVERY_FAILED, S.DELIVERY_SCHEDULED, frozenset({_P})),
        (S.DELIVERY_FAILED, S.OUT_FOR_DELIVERY, frozenset({_P})),
        (S.QUERY, S.REJECTED, frozenset({_P})),
        (S.CANCEL_REQUESTED, S.CANCELLED, frozenset({_P})),
    ]
    moves += [(status, S.CANCEL_REQUESTED, frozenset({_T})) for status in BEFORE_DISPENSED]
    moves += [(status, S.EXPIRED, frozenset({_G})) for status in BEFORE_DISPENSED]
    # An order the provider never received is cancelled at once, without asking it.
    moves += [(status, S.CANCELLED, frozenset({_T})) for status in NOT_YET_AT_PROVIDER]
    table: dict[Status, dict[Status, frozenset[Actor]]] = {}
    for current, to, actors in moves:
        table.setdefault(current, {})[to] = actors
    return table


TRANSITIONS: Mapping[Status, Mapping[Status, frozenset[Actor]]] = _table()
"""The fixed moves: `TRANSITIONS[current][to]` is who may make the move. Two more rules depend on
the status an item was in when a query or a cancel request interrupted it (its `resume`):
a query goes back to `resume` (answered, by the trust or the provider) or on to a move the provider
could make from `resume`; a cancel request goes back to `resume` when the provider refuses it."""

# Moves judged against where the item is now, in the order they are made: the order's journey to the
# provider. Every other move is a report about the order at the provider, replayed in the order the
# reports say things happened (lastModified), from `sent`.
JOURNEY_MOVES: Mapping[Actor, frozenset[Status]] = {
    _G: frozenset({S.QUEUED, S.SENT, S.UNDELIVERABLE, S.REJECTED}),
    _T: frozenset({S.CANCELLED}),
    _P: frozenset(),
}
AT_PROVIDER = S.SENT
"""Where the replay of reports starts: a report about an order says the provider has it."""


def is_journey_move(to: Status, actor: Actor) -> bool:
    return to in JOURNEY_MOVES[actor]


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


def allowed_next(state: ItemState, actor: Actor) -> frozenset[Status]:
    """Every status `actor` may move `state` to."""
    nexts = {to for to, actors in TRANSITIONS.get(state.status, {}).items() if actor in actors}
    if state.resume is not None:
        if state.status == S.QUERY and actor in (_P, _T):
            nexts.add(state.resume)
        if state.status == S.QUERY and actor is _P:
            # The provider may report the next step at once rather than the return first.
            nexts.update(
                to
                for to, actors in TRANSITIONS.get(state.resume, {}).items()
                if _P in actors and to != S.QUERY
            )
        if state.status == S.CANCEL_REQUESTED and actor is _P:
            nexts.add(state.resume)
    return frozenset(nexts)


def step(state: ItemState, requested: Status, actor: Actor) -> ItemState:
    """One move by `actor`, or `IllegalTransition`."""
    if requested not in allowed_next(state, actor):
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
            state = step(state, update.status, actor_of(update.source))
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


_TASK_STATUS: Mapping[Status, str] = {
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
}


def task_status(status: Status) -> str:
    """The FHIR `Task.status` that goes with a business status."""
    return _TASK_STATUS[status]


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


def business_status(status: Status) -> dict[str, Any]:
    """`Task.businessStatus` for a status."""
    return {"coding": [{"system": STATUS_SYSTEM, "code": status.value, "display": DEFINITIONS[status]}]}


def code_system() -> dict[str, Any]:
    """The homecare-status CodeSystem the gateway publishes, from this table."""
    return {
        "resourceType": "CodeSystem",
        "id": "homecare-status",
        "url": STATUS_SYSTEM,
        "name": "HomecareStatus",
        "title": "Homecare prescription status",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "description": (
            "The business status of a homecare prescription line item, as the gateway tracks it "
            "(Task.businessStatus). Terminal codes end the item's lifecycle."
        ),
        "property": [{"code": "terminal", "type": "boolean", "description": "No further status follows"}],
        "concept": [
            {
                "code": status.value,
                "display": status.value.replace("-", " ").capitalize(),
                "definition": DEFINITIONS[status],
                "property": [{"code": "terminal", "valueBoolean": status in TERMINAL}],
            }
            for status in Status
        ],
    }
