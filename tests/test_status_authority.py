"""Every (from, to, who) of the status lifecycle through the one status authority, on a real database.

The expectations here are written out from DESIGN.md §10 independently of `gateway.domain.status`, so
the table there and this reading of the contract check each other. Each from-state is reached by a
real item walked through `change_status`; every move from it, by every actor, is then tried in a
savepoint that is rolled back: a legal move is taken (the item and its prescription move), an
illegal one is refused with 409 and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.domain import status
from gateway.domain.context import Context
from gateway.domain.intake import receive_message_blocking
from gateway.domain.status import Status, Verdict
from gateway.domain.status_authority import RefusedMove, change_status
from gateway.store import items
from gateway.store.db import Database, Tx
from gateway.store.items import ItemKey, ItemView

S = Status
G, P, T = "gateway", "provider", "trust"
SOURCE = {G: "gateway", P: "provider:VNCEL", T: "trust:RBA"}
BEFORE_DISPENSED = {S.RECEIVED, S.QUEUED, S.SENT, S.ACCEPTED, S.QUERY, S.IN_PREPARATION, S.UNDELIVERABLE}
NOT_YET_AT_PROVIDER = {S.RECEIVED, S.QUEUED, S.UNDELIVERABLE}

# DESIGN.md §10, move by move, with who makes it.
FIXED: dict[tuple[Status, Status], set[str]] = {
    (S.RECEIVED, S.QUEUED): {G},
    (S.QUEUED, S.SENT): {G},
    (S.QUEUED, S.UNDELIVERABLE): {G},
    (S.QUEUED, S.REJECTED): {G},  # the provider's system refused the order when it was sent
    (S.UNDELIVERABLE, S.QUEUED): {G},  # re-driven
    (S.SENT, S.ACCEPTED): {P},
    (S.SENT, S.REJECTED): {P, G},
    (S.SENT, S.QUERY): {P},
    (S.ACCEPTED, S.IN_PREPARATION): {P},
    (S.ACCEPTED, S.DISPENSED): {P},
    (S.ACCEPTED, S.QUERY): {P},
    (S.ACCEPTED, S.REJECTED): {P},
    (S.IN_PREPARATION, S.DISPENSED): {P},
    (S.IN_PREPARATION, S.QUERY): {P},
    (S.DISPENSED, S.DELIVERY_SCHEDULED): {P},
    (S.DISPENSED, S.OUT_FOR_DELIVERY): {P},
    (S.DISPENSED, S.DELIVERED): {P},
    (S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY): {P},
    (S.DELIVERY_SCHEDULED, S.DELIVERED): {P},
    (S.DELIVERY_SCHEDULED, S.DELIVERY_FAILED): {P},
    (S.OUT_FOR_DELIVERY, S.DELIVERED): {P},
    (S.OUT_FOR_DELIVERY, S.DELIVERY_FAILED): {P},
    (S.DELIVERY_FAILED, S.DELIVERY_SCHEDULED): {P},
    (S.DELIVERY_FAILED, S.OUT_FOR_DELIVERY): {P},
    (S.QUERY, S.REJECTED): {P},
    (S.CANCEL_REQUESTED, S.CANCELLED): {P},
    **{(status, S.CANCEL_REQUESTED): {T} for status in BEFORE_DISPENSED},
    **{(status, S.EXPIRED): {G} for status in BEFORE_DISPENSED},
    **{(status, S.CANCELLED): {T} for status in NOT_YET_AT_PROVIDER},
}


def is_journey(to: Status, actor: str) -> bool:
    """The order's way to the provider, judged where the item is now; everything else is a report."""
    return (actor == G and to in {S.QUEUED, S.SENT, S.UNDELIVERABLE, S.REJECTED}) or (
        actor == T and to == S.CANCELLED
    )


def legal(status: Status, resume: Status | None, to: Status, actor: str) -> bool:
    if actor in FIXED.get((status, to), set()):
        return True
    if status == S.QUERY and resume is not None:
        if to == resume and actor in (P, T):
            return True  # answered: back where it was
        if actor == P and to != S.QUERY and P in FIXED.get((resume, to), set()):
            return True  # the provider reports the next step at once
    return status == S.CANCEL_REQUESTED and to == resume and actor == P  # the provider refused to cancel


@dataclass(frozen=True)
class Path:
    name: str
    moves: tuple[tuple[Status, str], ...]

    @property
    def has_reports(self) -> bool:
        return any(not is_journey(to, actor) for to, actor in self.moves)


def expected(path: Path, view: ItemView, to: Status, actor: str) -> str:
    """`applied`, `duplicate` or `refused` for one move from where `path` left the item."""
    status = Status(view.status)
    resume = Status(view.resume_status) if view.resume_status else None
    if is_journey(to, actor):
        return "applied" if legal(status, resume, to, actor) else "refused"
    if status in {S.REJECTED, S.CANCELLED} and not path.has_reports:
        return "refused"  # the journey ended before the provider ever had the order
    if status in NOT_YET_AT_PROVIDER and not path.has_reports:
        # A report about the order says the provider has it: judged as if sent.
        status, resume = S.SENT, None
    if to == status:
        return "duplicate"
    return "applied" if legal(status, resume, to, actor) else "refused"


TO_SENT = ((S.SENT, G),)
ACCEPTED = (*TO_SENT, (S.ACCEPTED, P))
IN_PREPARATION = (*ACCEPTED, (S.IN_PREPARATION, P))
DISPENSED = (*ACCEPTED, (S.DISPENSED, P))
SCHEDULED = (*DISPENSED, (S.DELIVERY_SCHEDULED, P))
PATHS = [
    Path("queued", ()),
    Path("sent", TO_SENT),
    Path("undeliverable", ((S.UNDELIVERABLE, G),)),
    Path("re-driven", ((S.UNDELIVERABLE, G), (S.QUEUED, G))),
    Path("refused at send", ((S.REJECTED, G),)),
    Path("cancelled before sending", ((S.CANCELLED, T),)),
    Path("rejected by the provider", (*TO_SENT, (S.REJECTED, P))),
    Path("accepted", ACCEPTED),
    Path("in preparation", IN_PREPARATION),
    Path("query on sent", (*TO_SENT, (S.QUERY, P))),
    Path("query on accepted", (*ACCEPTED, (S.QUERY, P))),
    Path("query in preparation", (*IN_PREPARATION, (S.QUERY, P))),
    Path("cancel requested when sent", (*TO_SENT, (S.CANCEL_REQUESTED, T))),
    Path("cancel requested when accepted", (*ACCEPTED, (S.CANCEL_REQUESTED, T))),
    Path("cancel requested in a query", (*ACCEPTED, (S.QUERY, P), (S.CANCEL_REQUESTED, T))),
    Path("cancel refused", (*ACCEPTED, (S.CANCEL_REQUESTED, T), (S.ACCEPTED, P))),
    Path("cancelled by the provider", (*ACCEPTED, (S.CANCEL_REQUESTED, T), (S.CANCELLED, P))),
    Path("expired", (*TO_SENT, (S.EXPIRED, G))),
    Path("dispensed", DISPENSED),
    Path("delivery scheduled", SCHEDULED),
    Path("out for delivery", (*SCHEDULED, (S.OUT_FOR_DELIVERY, P))),
    Path("delivery failed", (*SCHEDULED, (S.DELIVERY_FAILED, P))),
    Path("delivered", (*SCHEDULED, (S.DELIVERED, P))),
]
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def context(db: Database) -> Iterator[Context]:
    context = Context.for_database(db)
    yield context
    context.close()


def new_item(context: Context, seed: int) -> str:
    body = orjson.dumps(PrescriptionMessageBuilder(seed=seed).build(items=1))
    caller = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))
    answer = receive_message_blocking(
        context, body=body, document=orjson.loads(body), caller=caller, request_id=str(uuid.uuid4())
    )
    assert answer.status_code == 200
    with context.db.snapshot() as tx:
        (view,) = items.of_prescription(tx, str(answer.prescription_id))
    return view.item_id


def move(tx: Tx, item_id: str, to: Status, actor: str, minute: int) -> str:
    view = items.find(tx, ItemKey.by_id(item_id), for_change=True)
    assert view is not None
    moment = T0 + timedelta(minutes=minute)
    try:
        applied = change_status(
            tx, view, to, source=SOURCE[actor], occurred_at=moment, detail={}, now=moment, listener=None
        )
    except RefusedMove as refused:
        assert refused.status_code == 409 and refused.current is not None and refused.requested == to
        return "refused"
    return applied.verdict.value


def test_every_move_from_every_state_by_every_actor(context: Context) -> None:
    checked = 0
    for seed, path in enumerate(PATHS, start=1):
        item_id = new_item(context, seed)
        with context.db.transaction() as tx:
            for minute, (to, actor) in enumerate(path.moves, start=1):
                assert move(tx, item_id, to, actor, minute) == Verdict.APPLIED.value, (path.name, to, actor)
            start = items.find(tx, ItemKey.by_id(item_id))
            assert start is not None
            for to in Status:
                for actor in (G, P, T):
                    want = expected(path, start, to, actor)
                    savepoint = tx.connection.begin_nested()
                    got = move(tx, item_id, to, actor, minute=100)
                    after = items.find(tx, ItemKey.by_id(item_id))
                    savepoint.rollback()
                    assert after is not None
                    assert got == want, f"{path.name}: {start.status} -> {to} by {actor}"
                    moved_to = start.status if want == "refused" else to.value
                    assert after.status == moved_to, f"{path.name}: {to} by {actor} left it '{after.status}'"
                    checked += 1
    assert checked == len(PATHS) * len(Status) * 3


def test_the_transition_table_is_built_as_design_md_reads() -> None:
    """`status._table()` builds `TRANSITIONS` once, at import; here it is built again and compared
    with the reading above move by move (so a changed move fails here as well as in the walk)."""
    built = {
        (current, to): {actor.value for actor in actors}
        for current, nexts in status._table().items()
        for to, actors in nexts.items()
    }
    assert built == FIXED
    assert status._table() == status.TRANSITIONS
