"""The status state machine: transitions, ordering by lastModified, and the derived status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.status import (
    TERMINAL,
    Actor,
    IllegalTransition,
    ItemState,
    Status,
    StatusUpdate,
    Verdict,
    admit_update,
    allowed_next,
    attention_status,
    derive,
    medication_request_status,
    prescription_status,
    step,
)

S = Status
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PROVIDER = "provider:VNCEL"


# Who makes each move in these walks (DESIGN.md §10): the gateway moves the order to the provider and
# expires it, the trust cancels, the provider reports everything else.
MOVER = {
    S.QUEUED: Actor.GATEWAY,
    S.SENT: Actor.GATEWAY,
    S.UNDELIVERABLE: Actor.GATEWAY,
    S.EXPIRED: Actor.GATEWAY,
    S.CANCEL_REQUESTED: Actor.TRUST,
}


def mover(status: Status, current: Status) -> Actor:
    if status is S.CANCELLED and current is not S.CANCEL_REQUESTED:
        return Actor.TRUST
    if status is S.REJECTED and current is S.QUEUED:
        return Actor.GATEWAY
    return MOVER.get(status, Actor.PROVIDER)


def walk(*statuses: Status, start: Status = S.SENT) -> ItemState:
    state = ItemState(start)
    for status in statuses:
        state = step(state, status, mover(status, state.status))
    return state


def anyone(state: ItemState) -> frozenset[Status]:
    """Every status some actor may move `state` to."""
    return frozenset().union(*(allowed_next(state, actor) for actor in Actor))


def update(status: Status, minute: int, sequence: int, source: str = PROVIDER) -> StatusUpdate:
    return StatusUpdate(status, T0 + timedelta(minutes=minute), source, sequence)


def test_the_happy_lifecycle_is_allowed() -> None:
    state = walk(
        S.ACCEPTED, S.IN_PREPARATION, S.DISPENSED, S.DELIVERY_SCHEDULED, S.OUT_FOR_DELIVERY, S.DELIVERED
    )
    assert state.status is S.DELIVERED


def test_the_gateway_side_of_the_lifecycle() -> None:
    assert walk(S.QUEUED, S.SENT, start=S.RECEIVED).status is S.SENT
    assert walk(S.UNDELIVERABLE, S.QUEUED, S.SENT, start=S.QUEUED).status is S.SENT
    assert walk(S.REJECTED, start=S.QUEUED).status is S.REJECTED


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), S.DISPENSED),
        ((S.ACCEPTED,), S.DELIVERED),
        ((S.ACCEPTED, S.DISPENSED), S.CANCEL_REQUESTED),
        ((S.ACCEPTED, S.DISPENSED, S.DELIVERED), S.OUT_FOR_DELIVERY),
        ((S.REJECTED,), S.ACCEPTED),
        ((S.ACCEPTED, S.DISPENSED), S.EXPIRED),
        ((S.ACCEPTED,), S.CANCELLED),
    ],
)
def test_illegal_transitions_name_the_current_and_requested_status(
    path: tuple[Status, ...], illegal: Status
) -> None:
    state = walk(*path)
    with pytest.raises(IllegalTransition) as refused:
        step(state, illegal, mover(illegal, state.status))
    assert refused.value.current is state.status and refused.value.requested is illegal
    assert str(state.status) in str(refused.value) and str(illegal) in str(refused.value)


def test_terminal_states_go_nowhere() -> None:
    for status in TERMINAL:
        assert anyone(ItemState(status)) == frozenset()


def test_a_query_returns_to_the_status_it_interrupted_or_moves_on() -> None:
    state = walk(S.ACCEPTED, S.IN_PREPARATION, S.QUERY)
    assert state.resume is S.IN_PREPARATION
    assert anyone(state) == {S.IN_PREPARATION, S.DISPENSED, S.REJECTED, S.CANCEL_REQUESTED, S.EXPIRED}
    assert allowed_next(state, Actor.TRUST) == {S.IN_PREPARATION, S.CANCEL_REQUESTED}
    state = step(state, S.IN_PREPARATION, Actor.TRUST)
    assert state.status is S.IN_PREPARATION and state.resume is None


def test_a_refused_cancel_goes_back_where_it_was_and_an_agreed_one_ends_it() -> None:
    state = walk(S.ACCEPTED, S.CANCEL_REQUESTED)
    assert step(state, S.ACCEPTED, Actor.PROVIDER).status is S.ACCEPTED
    assert step(state, S.CANCELLED, Actor.PROVIDER).status is S.CANCELLED
    with pytest.raises(IllegalTransition):
        step(state, S.DISPENSED, Actor.PROVIDER)
    with pytest.raises(IllegalTransition):
        step(state, S.CANCELLED, Actor.TRUST)


def test_an_order_never_sent_can_be_cancelled_at_once() -> None:
    assert S.CANCELLED in allowed_next(ItemState(S.QUEUED), Actor.TRUST)
    assert S.CANCELLED in allowed_next(ItemState(S.UNDELIVERABLE), Actor.TRUST)
    assert S.CANCELLED not in anyone(ItemState(S.ACCEPTED))


def test_a_failed_delivery_can_be_rescheduled_then_delivered() -> None:
    state = walk(
        S.ACCEPTED, S.DISPENSED, S.DELIVERY_SCHEDULED, S.DELIVERY_FAILED, S.DELIVERY_SCHEDULED, S.DELIVERED
    )
    assert state.status is S.DELIVERED


def test_an_older_update_from_the_same_source_is_superseded() -> None:
    history = [update(S.ACCEPTED, 1, 1), update(S.DISPENSED, 3, 2)]
    state, verdict = admit_update(ItemState(S.SENT), history, update(S.IN_PREPARATION, 2, 3))
    assert verdict is Verdict.SUPERSEDED and state.status is S.DISPENSED


def test_only_the_same_sources_own_applied_updates_can_supersede() -> None:
    """The trust answered the provider's query at minute 5; the provider's report of minute 4 is newer
    than anything the provider itself said, so it applies (the trust's later answer does not count)."""
    history = [
        update(S.ACCEPTED, 1, 1),
        update(S.QUERY, 2, 2),
        update(S.ACCEPTED, 5, 3, source="trust:RBA"),
    ]
    state, verdict = admit_update(ItemState(S.SENT), history, update(S.IN_PREPARATION, 4, 4))
    assert verdict is Verdict.APPLIED and state.status is S.IN_PREPARATION


def test_two_reports_with_the_same_time_both_apply_in_arrival_order() -> None:
    """lastModified has a resolution: a second report stamped the same moment is not older."""
    history = [update(S.ACCEPTED, 1, 1)]
    state, verdict = admit_update(ItemState(S.SENT), history, update(S.DISPENSED, 1, 2))
    assert verdict is Verdict.APPLIED and state.status is S.DISPENSED


def test_the_same_status_again_is_a_duplicate() -> None:
    history = [update(S.ACCEPTED, 1, 1)]
    state, verdict = admit_update(ItemState(S.SENT), history, update(S.ACCEPTED, 5, 2))
    assert verdict is Verdict.DUPLICATE and state.status is S.ACCEPTED


def test_an_illegal_update_is_refused_naming_the_current_status() -> None:
    with pytest.raises(IllegalTransition) as refused:
        admit_update(ItemState(S.SENT), [update(S.ACCEPTED, 1, 1)], update(S.DELIVERED, 2, 2))
    assert refused.value.current is S.ACCEPTED and refused.value.requested is S.DELIVERED


def test_the_prescription_shows_its_least_advanced_item_and_says_partial() -> None:
    assert prescription_status([S.DISPENSED, S.DISPENSED]).partial is False
    mixed = prescription_status([S.DELIVERED, S.OUT_FOR_DELIVERY])
    assert mixed.status is S.OUT_FOR_DELIVERY and mixed.partial


# --- property: arrival order and duplicates do not change the outcome -------------------------


@st.composite
def provider_histories(draw: st.DrawFn) -> list[StatusUpdate]:
    """A legal history of one provider's updates for one item, each with its lastModified."""
    state = ItemState(S.SENT)
    history: list[StatusUpdate] = []
    for minute in range(1, draw(st.integers(min_value=1, max_value=12)) + 1):
        options = sorted(allowed_next(state, Actor.PROVIDER) - {S.CANCELLED})
        if state.status in TERMINAL or not options:
            break
        status = draw(st.sampled_from(options))
        state = step(state, status, Actor.PROVIDER)
        history.append(StatusUpdate(status, T0 + timedelta(minutes=minute), PROVIDER, minute))
    return history


@settings(max_examples=400, deadline=None)
@given(history=provider_histories(), data=st.data())
def test_any_arrival_order_with_duplicates_ends_at_the_newest_legal_update(
    history: list[StatusUpdate], data: st.DataObject
) -> None:
    resent = data.draw(st.lists(st.sampled_from(history), max_size=6)) if history else []
    arrivals = data.draw(st.permutations(history + resent))
    stored: list[StatusUpdate] = []
    log: list[tuple[StatusUpdate, Verdict]] = []
    refused: list[StatusUpdate] = []
    start = ItemState(S.SENT)
    for sequence, arrival in enumerate(arrivals, start=1000):
        incoming = StatusUpdate(arrival.status, arrival.occurred_at, arrival.source, sequence)
        try:
            _, verdict = admit_update(start, stored, incoming)
        except IllegalTransition:
            refused.append(incoming)
            log.append((incoming, Verdict.REFUSED))
            continue
        stored.append(incoming)
        log.append((incoming, verdict))
    # A refused update was answered 409 with the current status; the provider sends it again
    # (with its backoff) until it is taken.
    while refused:
        taken = []
        for again in refused:
            try:
                admit_update(start, stored, again)
            except IllegalTransition:
                continue
            stored.append(again)
            taken.append(again)
        if not taken:
            break
        refused = [u for u in refused if u not in taken]
    state, _ = derive(start, stored)
    expected = max(history, key=lambda u: u.occurred_at).status if history else S.SENT
    assert state.status is expected
    assert len(log) == len(arrivals), "every update that arrived is in the log"


@settings(max_examples=200, deadline=None)
@given(history=provider_histories(), data=st.data())
def test_the_derived_status_does_not_depend_on_arrival_order(
    history: list[StatusUpdate], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(history))
    assert derive(ItemState(S.SENT), shuffled)[0] == derive(ItemState(S.SENT), history)[0]


def test_the_medication_request_status_follows_the_item() -> None:
    """FHIR R4 `MedicationRequest.status`: done when delivered, stopped when it lapsed, cancelled when
    refused or withdrawn, on hold while a query is open, active otherwise."""
    ended = {
        S.DELIVERED: "completed",
        S.EXPIRED: "stopped",
        S.CANCELLED: "cancelled",
        S.REJECTED: "cancelled",
    }
    expected = {**ended, S.QUERY: "on-hold"}
    for status in Status:
        assert medication_request_status(status) == expected.get(status, "active"), status


def test_a_prescription_without_items_has_no_status() -> None:
    with pytest.raises(ValueError, match=r"^a prescription has at least one item$"):
        prescription_status([])


def test_the_prescription_needs_attention_for_its_most_urgent_item() -> None:
    assert attention_status([S.ACCEPTED, S.DISPENSED]) is None
    assert attention_status([S.ACCEPTED, S.REJECTED]) is S.REJECTED
    assert attention_status([S.REJECTED, S.UNDELIVERABLE, S.QUERY]) is S.QUERY
    assert attention_status([S.DELIVERY_FAILED, S.REJECTED]) is S.DELIVERY_FAILED
    assert attention_status([]) is None
