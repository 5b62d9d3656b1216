"""Delivery to providers over real sockets: the outbox, the dispatcher and the provider simulator."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import event, insert, select, text, update

from adapters.fhir_rest.simulator import SimulatorServer
from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from gateway.api.metrics import admin_app
from gateway.clock import system_clock
from gateway.dispatch.policy import CircuitBreaker, RetryPolicy
from gateway.dispatch.provider_channel import ProviderChannel
from gateway.dispatch.settings import DispatcherSettings
from gateway.dispatch.worker import Dispatcher
from gateway.domain.cancellation import provider_answered_cancel
from gateway.domain.context import Context
from gateway.domain.delivery import DeliveryOutcome, OutcomeKind, Recorded, record_provider_outcome, redrive
from gateway.domain.expiry import expire_due
from gateway.domain.intake import receive_message_blocking
from gateway.domain.messages import IntakeAnswer
from gateway.domain.status_authority import Applied
from gateway.store import outbox
from gateway.store.db import Database, Tx
from gateway.store.models import OutboxMessage, Subscription
from gateway.store.outbox import ClaimedMessage
from gateway.store.providers import update_provider
from tests.support import RunningServer, free_port

FAST = DispatcherSettings(
    poll_seconds=0.02,
    lease_seconds=5,
    max_in_flight=16,
    retry=RetryPolicy(base_seconds=0.05, cap_seconds=0.2, max_attempts=4),
    breaker_threshold=1000,
    breaker_cooldown_seconds=0,
)
TRUST = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))


@pytest.fixture
def simulator(db: Database) -> Iterator[SimulatorServer]:
    with SimulatorServer("VNCEL", seed=7, lifecycle=False) as server:
        with db.write() as session:
            update_provider(
                session,
                "VNCEL",
                now=system_clock(),
                settings={"base_url": server.base_url, "timeout_seconds": 2.0},
            )
        yield server


def accept(
    db: Database, count: int = 1, *, seed: int = 1, items: int = 1, valid_until: str | None = None
) -> list[tuple[str, bytes]]:
    """Prescriptions accepted through the intake service: (gateway id, the exact bytes)."""
    builder = PrescriptionMessageBuilder(seed=seed)
    context = Context.for_database(db)
    accepted = []
    for _ in range(count):
        message = builder.build(items=items)
        if valid_until is not None:
            for entry in message["entry"]:
                if entry["resource"]["resourceType"] == "MedicationRequest":
                    period = {"start": "2026-01-01", "end": valid_until}
                    entry["resource"]["dispenseRequest"]["validityPeriod"] = period
        body = orjson.dumps(message)
        answer = receive_message_blocking(
            context, body=body, document=orjson.loads(body), caller=TRUST, request_id=str(uuid.uuid4())
        )
        assert answer.prescription_id is not None
        accepted.append((answer.prescription_id, body))
    context.close()
    return accepted


def record_delivered(tx: Tx, claimed: Any, *, owner: str, now: Any) -> bool:
    """The provider took the message: recorded unless the lease was lost."""
    assert isinstance(claimed, ClaimedMessage)
    recorded = record_provider_outcome(
        tx, claimed, DeliveryOutcome.delivered(), owner=owner, now=now, retry_at=None, listener=None
    )
    return recorded is not Recorded.LEASE_LOST


def dispatch(
    db: Database, *, settings: DispatcherSettings = FAST, until: Any = None, timeout: float = 20
) -> None:
    """Run a dispatcher until `until(db)` holds (default: nothing left pending or sending)."""

    def settled(database: Database) -> bool:
        figures = outbox.stats(database, now=system_clock())
        return figures.depth == 0

    condition = until or settled

    async def run() -> None:
        dispatcher = Dispatcher(db, clock=system_clock, settings=settings, seed=1)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while not await asyncio.to_thread(condition, db):
                if time.monotonic() > deadline:
                    raise AssertionError("the dispatcher did not settle in time")
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task

    asyncio.run(run())


def status_of(db: Database, prescription_id: str) -> str:
    with db.read() as session:
        return str(
            session.execute(
                text("SELECT status FROM prescription WHERE id = :id"), {"id": prescription_id}
            ).scalar_one()
        )


def events_of(db: Database, prescription_id: str) -> list[tuple[str, Any]]:
    with db.read() as session:
        rows = session.execute(
            text("SELECT status, detail FROM status_event WHERE prescription_id = :id ORDER BY id"),
            {"id": prescription_id},
        ).all()
    return [(row[0], orjson.loads(row[1]) if isinstance(row[1], str) else row[1]) for row in rows]


def outbox_rows(db: Database) -> list[tuple[str, int]]:
    with db.read() as session:
        return [
            (row[0], row[1])
            for row in session.execute(text("SELECT state, attempts FROM outbox ORDER BY id"))
        ]


def test_an_accepted_prescription_reaches_its_provider_byte_for_byte(
    db: Database, simulator: SimulatorServer
) -> None:
    ((prescription_id, body),) = accept(db, items=2)
    assert status_of(db, prescription_id) == "queued"
    dispatch(db)
    assert status_of(db, prescription_id) == "sent"
    # Received and queued as a prescription; each line item's move to `sent` is an event of its own.
    assert [status for status, _ in events_of(db, prescription_id)] == ["received", "queued", "sent", "sent"]
    (order,) = simulator.orders()
    assert order.message == body, "the provider gets the trust's bytes unchanged"
    assert order.idempotency_key == f"order-{prescription_id}"
    assert order.receipts == 1
    (receipt,) = simulator.receipts()
    assert receipt.correlation_id == prescription_id and receipt.request_id
    assert outbox_rows(db) == [("done", 0)]


def test_provider_down_then_up_is_delivered_once_recovered(db: Database, simulator: SimulatorServer) -> None:
    simulator.configure(down=True)
    ((prescription_id, _),) = accept(db)
    dispatch(db, until=lambda d: outbox_rows(d)[0][1] >= 1)
    assert status_of(db, prescription_id) == "queued"
    simulator.configure(down=False)
    dispatch(db)
    assert status_of(db, prescription_id) == "sent"
    (order,) = simulator.orders()
    assert order.receipts == 2, "refused while down, then taken once when up"
    assert [r.outcome for r in simulator.receipts()] == ["down", "accepted"]


def test_a_slow_provider_times_out_and_the_retry_is_not_a_second_order(
    db: Database, simulator: SimulatorServer
) -> None:
    with db.write() as session:
        update_provider(session, "VNCEL", now=system_clock(), settings={"timeout_seconds": 0.3})
    simulator.configure(delay_seconds=1.0)
    ((prescription_id, _),) = accept(db)
    dispatch(db, until=lambda d: outbox_rows(d)[0][1] >= 1)
    simulator.configure(delay_seconds=0.0)
    dispatch(db)
    assert status_of(db, prescription_id) == "sent"
    key = f"order-{prescription_id}"
    deadline = time.monotonic() + 10
    while simulator.receipt_counts().get(key, 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert simulator.receipt_counts()[key] >= 2, "the timed-out request and its retry both arrived"
    assert len(simulator.orders()) == 1, "the idempotency key made them one order"


def test_server_errors_then_success(db: Database, simulator: SimulatorServer) -> None:
    simulator.configure(fail_next=2)
    ((prescription_id, _),) = accept(db)
    dispatch(db)
    assert status_of(db, prescription_id) == "sent"
    assert outbox_rows(db) == [("done", 2)]
    assert [r.status_code for r in simulator.receipts()] == [500, 500, 200]


def test_a_provider_refusal_rejects_the_prescription_with_its_reason(
    db: Database, simulator: SimulatorServer
) -> None:
    simulator.configure(reject_rate=1.0)
    ((prescription_id, _),) = accept(db)
    dispatch(db)
    assert status_of(db, prescription_id) == "rejected"
    status, detail = events_of(db, prescription_id)[-1]
    assert status == "rejected"
    assert detail["reason"] == {
        "code": "out-of-stock",
        "text": "Out of stock: the medicine cannot be supplied at present",
    }, "the provider's own code and words"
    assert simulator.orders() == []


def test_retries_spent_make_it_undeliverable_and_a_redrive_delivers_it(
    db: Database, simulator: SimulatorServer
) -> None:
    simulator.configure(down=True)
    ((prescription_id, _),) = accept(db)
    dispatch(db)
    assert outbox_rows(db) == [("dead", 4)]
    assert status_of(db, prescription_id) == "undeliverable"
    assert outbox.stats(db, now=system_clock()).by_provider_dead == {"VNCEL": 1}
    simulator.configure(down=False)
    assert redrive(Context(db), provider_ods="VNCEL") == 1
    assert status_of(db, prescription_id) == "queued"
    dispatch(db)
    assert status_of(db, prescription_id) == "sent"
    assert [s for s, _ in events_of(db, prescription_id)] == [
        "received",
        "queued",
        "undeliverable",
        "queued",
        "sent",
    ]


def test_a_redrive_names_its_prescription_or_provider_and_starts_the_retries_afresh(
    db: Database, simulator: SimulatorServer
) -> None:
    empty = outbox.stats(db, now=system_clock())
    assert (empty.depth, empty.due, empty.oldest_due_age_seconds, empty.dead, empty.held) == (0, 0, 0.0, 0, 0)
    simulator.configure(down=True)
    (first, _), (second, _) = accept(db, count=2, seed=43)
    dispatch(db)
    assert outbox_rows(db) == [("dead", 4), ("dead", 4)]
    assert redrive(Context(db), provider_ods="VNFKT") == 0, "no dead message to that provider"
    assert redrive(Context(db), prescription_id=first) == 1
    assert (status_of(db, first), status_of(db, second)) == ("queued", "undeliverable")
    assert events_of(db, first)[-1] == ("queued", {"redriven": True})
    figures = outbox.stats(db, now=system_clock() + timedelta(seconds=30))
    assert (figures.depth, figures.due, figures.dead, figures.by_provider_dead) == (1, 1, 1, {"VNCEL": 1})
    assert 30 <= figures.oldest_due_age_seconds < 300, "due since the redrive"
    with db.read() as session:
        row = session.execute(
            text("SELECT state, attempts, last_error FROM outbox WHERE prescription_id = :id"), {"id": first}
        ).one()
    assert tuple(row) == ("pending", 0, None)
    dispatch(db)
    assert outbox_rows(db) == [("dead", 4), ("dead", 4)], "four fresh tries, not one"


def test_an_unusable_adapter_setting_is_retried_not_lost(db: Database) -> None:
    ((prescription_id, _),) = accept(db)
    dispatch(db, until=lambda d: outbox_rows(d)[0][1] >= 1)
    assert status_of(db, prescription_id) == "queued"
    assert outbox_rows(db)[0][0] == "pending"


def test_a_later_message_never_overtakes_an_earlier_one(db: Database) -> None:
    ((prescription_id, _),) = accept(db)
    now = system_clock()
    with db.write_connection() as connection:
        connection.execute(
            insert(OutboxMessage.__table__),  # type: ignore[attr-defined]
            [
                {
                    "prescription_id": prescription_id,
                    "kind": "cancel",
                    "provider_ods": "VNCEL",
                    "idempotency_key": f"cancel-{prescription_id}",
                    "ordering_key": prescription_id,
                    "state": "pending",
                    "attempts": 0,
                    "due_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
    first = outbox.claim_due(db, owner="a", now=now, lease=timedelta(seconds=30), limit=10)
    assert [m.kind for m in first] == ["new"]
    assert outbox.claim_due(db, owner="b", now=now, lease=timedelta(seconds=30), limit=10) == []
    with db.transaction() as tx:
        assert record_delivered(tx, first[0], owner="a", now=now)
    second = outbox.claim_due(db, owner="b", now=now, lease=timedelta(seconds=30), limit=10)
    assert [m.kind for m in second] == ["cancel"]


def test_a_poll_that_finds_nothing_due_takes_no_write_lock(db: Database) -> None:
    """While intake holds the write lock (a group commit), an empty poll answers at once instead of
    queueing behind it: its scan of a held-back provider's backlog never holds up intake."""
    accept(db)
    now = system_clock()
    (claimed,) = outbox.claim_due(db, owner="w1", now=now, lease=timedelta(seconds=30), limit=10)
    accept(db, seed=2)  # due, but for a provider whose breaker is open
    now = system_clock()
    polled = threading.Event()

    def poll() -> None:
        held_back = frozenset({claimed.provider_ods})
        lease = timedelta(seconds=30)
        assert (
            outbox.claim_due(db, owner="w2", now=now, lease=lease, limit=10, skip_providers=held_back) == []
        )
        polled.set()

    with db.write_connection():
        threading.Thread(target=poll, daemon=True).start()
        assert polled.wait(10), "the empty poll waited for the write lock"
    # A poll that finds something claims it in a write transaction, which looks again.
    later = now + timedelta(seconds=31)
    again = outbox.claim_due(db, owner="w2", now=later, lease=timedelta(seconds=30), limit=10)
    assert sorted(message.outbox_id for message in again)[0] == claimed.outbox_id and len(again) == 2


def test_a_claim_left_by_a_dead_worker_is_taken_again_after_its_lease(db: Database) -> None:
    accept(db)
    now = system_clock()
    (claimed,) = outbox.claim_due(db, owner="dead-worker", now=now, lease=timedelta(seconds=10), limit=10)
    assert (
        outbox.claim_due(
            db, owner="other", now=now + timedelta(seconds=9), lease=timedelta(seconds=10), limit=10
        )
        == []
    )
    (again,) = outbox.claim_due(
        db, owner="other", now=now + timedelta(seconds=11), lease=timedelta(seconds=10), limit=10
    )
    assert again.outbox_id == claimed.outbox_id
    with db.transaction() as tx:
        assert not record_delivered(tx, claimed, owner="dead-worker", now=now), "a lost lease records nothing"
        assert record_delivered(tx, again, owner="other", now=now)


def test_concurrent_workers_never_claim_the_same_row(db: Database) -> None:
    accept(db, count=60, seed=3)
    now = system_clock()

    def worker(name: str) -> list[int]:
        mine: list[int] = []
        while True:
            claimed = outbox.claim_due(db, owner=name, now=now, lease=timedelta(seconds=60), limit=3)
            if not claimed:
                return mine
            mine.extend(message.outbox_id for message in claimed)

    with ThreadPoolExecutor(max_workers=4) as pool:
        claims = list(pool.map(worker, ["w1", "w2", "w3", "w4"]))
    every = [outbox_id for claimed in claims for outbox_id in claimed]
    assert len(every) == 60
    assert len(set(every)) == 60, "a row was claimed by two workers"
    assert sum(1 for claimed in claims if claimed) >= 2, "the workers really competed"


def test_a_cancel_that_meets_a_claim_being_made_asks_the_provider(db: Database) -> None:
    """A dispatcher's claim not yet committed when a cancel looks at the order: the cancel waits for
    it, sees the order going out, and asks the provider (202) rather than answering 'cancelled'
    for an order that is about to be delivered."""
    if db.is_sqlite:
        pytest.skip("SQLite runs one writer at a time: a claim cannot be half made while a cancel runs")
    [(prescription_id, body)] = accept(db)
    cancel = orjson.dumps(build_cancellation(orjson.loads(body)))
    trust = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.u"}))
    context = Context.for_database(db, cancel_wait_seconds=0)

    def cancel_it() -> int:
        answer = receive_message_blocking(
            context, body=cancel, document=orjson.loads(cancel), caller=trust, request_id=str(uuid.uuid4())
        )
        return answer.status_code

    claim = text("UPDATE outbox SET state = :sending WHERE prescription_id = :id AND kind = :order")
    with db.engine.connect() as dispatcher, ThreadPoolExecutor(1) as pool:
        sending, order = outbox.State.SENDING.value, outbox.Kind.ORDER.value
        assert (
            dispatcher.execute(claim, {"sending": sending, "id": prescription_id, "order": order}).rowcount
            == 1
        )
        answer = pool.submit(cancel_it)
        time.sleep(0.5)
        assert not answer.done(), "the cancel did not wait for the claim in progress"
        dispatcher.commit()
        assert answer.result(timeout=30) == 202
    context.close()


def test_metrics_show_the_outbox_and_the_sends(db: Database, simulator: SimulatorServer) -> None:
    import httpx

    simulator.configure(down=True)
    accept(db, count=2, seed=5)
    dispatch(db, until=lambda d: all(attempts >= 1 for _, attempts in outbox_rows(d)))
    with RunningServer(admin_app(db, system_clock)) as admin:
        metrics = httpx.get(f"{admin.base_url}/metrics").text
    assert "homecare_outbox_depth 2.0" in metrics
    assert "homecare_outbox_oldest_due_age_seconds" in metrics
    assert 'homecare_dispatch_sends_total{outcome="retry",provider="VNCEL"}' in metrics


_TRUST = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.u"}))


def send_cancel(db: Database, body: bytes, item_positions: list[int] | None = None) -> IntakeAnswer:
    """The trust cancels the order in `body` (or only the items at `item_positions`), through intake,
    without waiting for the provider's answer."""
    cancel = orjson.dumps(build_cancellation(orjson.loads(body), item_positions=item_positions))
    context = Context.for_database(db, cancel_wait_seconds=0)
    try:
        return receive_message_blocking(
            context, body=cancel, document=orjson.loads(cancel), caller=_TRUST, request_id=str(uuid.uuid4())
        )
    finally:
        context.close()


def test_cancelling_one_item_of_an_unsent_order_leaves_the_order_to_go(db: Database) -> None:
    """Only a cancel naming every item of an order never sent withdraws it; one item of two is asked
    of the provider after the order, which still goes."""
    [(prescription_id, body)] = accept(db, items=2, seed=31)
    answer = send_cancel(db, body, [0])
    assert answer.status_code == 202, answer.body
    with db.read() as session:
        kinds = session.execute(
            text("SELECT kind, state FROM outbox WHERE prescription_id = :id ORDER BY id"),
            {"id": prescription_id},
        ).all()
        item_statuses = session.execute(
            text("SELECT status FROM prescription_item WHERE prescription_id = :id ORDER BY position"),
            {"id": prescription_id},
        ).all()
    assert [tuple(row) for row in kinds] == [
        (outbox.Kind.ORDER.value, outbox.State.PENDING.value),
        (outbox.Kind.CANCEL.value, outbox.State.PENDING.value),
    ]
    assert [row[0] for row in item_statuses] == ["cancel-requested", "queued"]


def test_a_second_cancel_of_an_unsent_order_is_asked_of_the_provider_too(db: Database) -> None:
    """The order now has a cancel message behind it: the second cancel is judged on the order alone."""
    [(prescription_id, body)] = accept(db, items=2, seed=39)
    for position in (0, 1):
        answer = send_cancel(db, body, [position])
        assert answer.status_code == 202, answer.body
    with db.read() as session:
        kinds = session.execute(
            text("SELECT kind, state FROM outbox WHERE prescription_id = :id ORDER BY id"),
            {"id": prescription_id},
        ).all()
    assert [tuple(row) for row in kinds] == [
        (outbox.Kind.ORDER.value, outbox.State.PENDING.value),
        (outbox.Kind.CANCEL.value, outbox.State.PENDING.value),
        (outbox.Kind.CANCEL.value, outbox.State.PENDING.value),
    ]


def test_a_send_moves_every_item_still_waiting_and_the_listener_hears_each_move(db: Database) -> None:
    """The order goes after one item of two was asked to be cancelled: the first item, waiting for the
    provider's answer, cannot become `sent` and stays; the second still does, and the status listener
    (subscriptions hang off it) hears that move."""
    [(prescription_id, body)] = accept(db, items=2, seed=37)
    answer = send_cancel(db, body, [0])
    assert answer.status_code == 202, answer.body
    now = system_clock()
    [claimed] = outbox.claim_due(db, owner="w1", now=now, lease=timedelta(seconds=30), limit=10)
    assert isinstance(claimed, ClaimedMessage) and claimed.kind == outbox.Kind.ORDER.value
    heard: list[tuple[str, str]] = []

    def listener(tx: Tx, applied: Applied, at: Any) -> None:
        heard.append((applied.view.item_id, applied.view.status))

    with db.transaction() as tx:
        recorded = record_provider_outcome(
            tx, claimed, DeliveryOutcome.delivered(), owner="w1", now=now, retry_at=None, listener=listener
        )
    assert recorded is Recorded.DELIVERED
    with db.read() as session:
        item_statuses = session.execute(
            text("SELECT id, status FROM prescription_item WHERE prescription_id = :id ORDER BY position"),
            {"id": prescription_id},
        ).all()
    assert [row[1] for row in item_statuses] == ["cancel-requested", "sent"]
    assert heard == [(item_statuses[1][0], "sent")]


def test_withdrawing_an_order_touches_only_its_own_prescriptions_unsent_order(db: Database) -> None:
    """A cancel of a whole unsent order, then expiry: each withdraws its own prescription's order
    while it is unsent; an order already delivered stays done, another prescription's stays due."""
    (sent, _), (cancelled, body), (other, _) = accept(db, count=3, seed=41, valid_until="2026-02-01")
    now = system_clock()
    [claimed] = outbox.claim_due(db, owner="w1", now=now, lease=timedelta(seconds=30), limit=1)
    assert isinstance(claimed, ClaimedMessage) and claimed.prescription_id == sent
    with db.transaction() as tx:
        assert record_delivered(tx, claimed, owner="w1", now=now)
    cancel = orjson.dumps(build_cancellation(orjson.loads(body)))
    trust = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.u"}))
    context = Context.for_database(db)
    answer = receive_message_blocking(
        context, body=cancel, document=orjson.loads(cancel), caller=trust, request_id=str(uuid.uuid4())
    )
    assert answer.status_code == 200, answer.body

    def order_states() -> dict[str, str]:
        with db.read() as session:
            rows = session.execute(text("SELECT prescription_id, state FROM outbox WHERE kind = 'new'"))
            return {row[0]: row[1] for row in rows}

    assert order_states() == {sent: "done", cancelled: "cancelled", other: "pending"}
    assert expire_due(context, now=now) == 2
    context.close()
    assert order_states() == {sent: "done", cancelled: "cancelled", other: "cancelled"}
    assert (status_of(db, sent), status_of(db, other)) == ("expired", "expired")


def test_a_circuit_breaker_opens_after_its_threshold_then_lets_a_batch_through() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=30)
    for _ in range(2):
        breaker.record_failure("VNCEL", now=100)
    assert breaker.state("VNCEL", now=100) == "closed"
    assert breaker.open_providers(now=100) == frozenset()
    breaker.record_failure("VNCEL", now=100)
    assert breaker.state("VNCEL", now=100) == "open"
    assert breaker.open_providers(now=129.9) == {"VNCEL"}
    assert breaker.state("VNFKT", now=100) == "closed", "one provider's failures never hold another's"
    assert breaker.state("VNCEL", now=130) == "half-open"
    assert breaker.open_providers(now=130) == frozenset()
    breaker.record_failure("VNCEL", now=130)
    assert breaker.state("VNCEL", now=131) == "open", "a failed half-open batch opens it again"
    breaker.record_success("VNCEL")
    assert breaker.state("VNCEL", now=131) == "closed"
    assert breaker.providers() == frozenset()


def test_a_provider_that_keeps_failing_is_left_alone_while_its_breaker_is_open(db: Database) -> None:
    """Two failures open the breaker: the dispatcher stops sending to the provider (no third attempt
    within the cooldown), although the retry policy alone would have spent the whole budget."""
    with db.write() as session:
        update_provider(
            session,
            "VNCEL",
            now=system_clock(),
            settings={"base_url": f"http://127.0.0.1:{free_port()}/fhir", "timeout_seconds": 1.0},
        )
    accept(db, seed=32)
    breaking = replace(FAST, breaker_threshold=2, breaker_cooldown_seconds=60)
    tried_twice_at: list[float] = []

    def held_back(database: Database) -> bool:
        if not tried_twice_at and any(attempts >= 2 for _, attempts in outbox_rows(database)):
            tried_twice_at.append(time.monotonic())
        return bool(tried_twice_at) and time.monotonic() - tried_twice_at[0] > 1.5

    dispatch(db, settings=breaking, until=held_back)
    # Without the breaker the retries (0.05-0.2 s apart, 4 at most) would have made it dead by now.
    assert outbox_rows(db) == [(outbox.State.PENDING.value, 2)]


# --- The outbox store, directly: rows in each state, as the dispatcher and the pull adapter leave them ---

_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]


def put_message(
    db: Database,
    prescription_id: str,
    *,
    state: str,
    kind: str = "cancel",
    provider_ods: str = "VNCEL",
    subscription_id: str | None = None,
    **values: Any,
) -> int:
    """One more outbox row of the prescription (a cancel unless told), as it would stand in `state`."""
    now = system_clock()
    row = {
        "prescription_id": prescription_id,
        "kind": kind,
        "provider_ods": provider_ods,
        "idempotency_key": f"{kind}-{uuid.uuid4()}",
        "ordering_key": f"sub:{subscription_id}" if subscription_id else prescription_id,
        "subscription_id": subscription_id,
        "state": state,
        "attempts": 0,
        "due_at": now,
        "created_at": now,
        "updated_at": now,
        **values,
    }
    with db.write_connection() as connection:
        return int(connection.execute(insert(_OUTBOX).values(**row)).inserted_primary_key[0])


def set_order(db: Database, prescription_id: str, **values: Any) -> int:
    """Puts the prescription's order row where the test needs it; its outbox id."""
    with db.write_connection() as connection:
        connection.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.prescription_id == prescription_id, _OUTBOX.c.kind == "new")
            .values(**values)
        )
        return int(
            connection.execute(
                select(_OUTBOX.c.id).where(
                    _OUTBOX.c.prescription_id == prescription_id, _OUTBOX.c.kind == "new"
                )
            ).scalar_one()
        )


def a_subscription(db: Database) -> str:
    subscription_id, now = str(uuid.uuid4()), system_clock()
    with db.write_connection() as connection:
        connection.execute(
            insert(Subscription.__table__).values(  # type: ignore[attr-defined]
                id=subscription_id,
                tenant_ods="RBA",
                client_id="trust-rba",
                criteria="Task",
                endpoint="http://127.0.0.1:9/hook",
                headers=[],
                status="active",
                failure_count=0,
                reason="every change",
                created_at=now,
                updated_at=now,
            )
        )
    return subscription_id


def states_of(db: Database, *outbox_ids: int) -> list[str]:
    with db.read() as session:
        found = dict(
            session.execute(select(_OUTBOX.c.id, _OUTBOX.c.state).where(_OUTBOX.c.id.in_(outbox_ids))).all()
        )
    return [found[outbox_id] for outbox_id in outbox_ids]


def test_the_outbox_figures_count_each_state_and_dead_provider_messages_per_provider(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=51)
    now = system_clock()
    set_order(db, prescription_id, due_at=now)  # due this very instant
    put_message(db, prescription_id, state="pending", due_at=now + timedelta(hours=1))
    put_message(
        db, prescription_id, state="sending", lease_owner="w1", lease_until=now + timedelta(seconds=30)
    )
    put_message(db, prescription_id, state="dead")
    put_message(db, prescription_id, state="dead", provider_ods="VNFKT")
    put_message(db, prescription_id, state="dead", provider_ods="VNFKT")
    put_message(db, prescription_id, state="dead", kind="notification", subscription_id=a_subscription(db))
    put_message(db, prescription_id, state="held", held_at=now)
    figures = outbox.stats(db, now=now)
    assert (figures.depth, figures.due, figures.dead, figures.held) == (3, 1, 4, 1), (
        "pending and sending wait"
    )
    assert figures.oldest_due_age_seconds == 0.0, "due now, not a second ago"
    assert figures.by_provider_dead == {"VNCEL": 1, "VNFKT": 2}, "a dead notification is no provider's"


def deliver_once(db: Database, claimed: ClaimedMessage) -> DeliveryOutcome:
    """Send one claimed message through the provider channel, as the dispatcher does, and close it."""
    channel = ProviderChannel(db, listener=None)

    async def deliver() -> DeliveryOutcome:
        await channel.prepare([claimed])
        try:
            return await channel.deliver(claimed)
        finally:
            await channel.aclose()

    return asyncio.run(deliver())


def claim_and_fail(db: Database, *, now: datetime, retry_at: datetime | None) -> Recorded:
    """Claim the one due order as worker w1 and record that its provider could not be reached."""
    [claimed] = outbox.claim_due(db, owner="w1", now=now, lease=timedelta(seconds=30), limit=1)
    assert isinstance(claimed, ClaimedMessage)
    with db.transaction() as tx:
        return record_provider_outcome(
            tx,
            claimed,
            DeliveryOutcome.failed("unreachable"),
            owner="w1",
            now=now,
            retry_at=retry_at,
            listener=None,
        )


def test_a_redriven_order_is_due_from_the_redrive_and_the_listener_hears_it_queued(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=52)
    failed_at = system_clock()
    recorded = claim_and_fail(db, now=failed_at, retry_at=None)
    assert recorded is Recorded.DEAD and status_of(db, prescription_id) == "undeliverable"
    heard: list[str] = []

    def listener(tx: Tx, applied: Applied, at: Any) -> None:
        heard.append(applied.view.status)

    later = failed_at + timedelta(hours=1)
    assert redrive(Context(db, clock=lambda: later, listener=listener), prescription_id=prescription_id) == 1
    assert heard == ["queued"], "subscribers hear of a redrive like any other move"
    assert outbox.stats(db, now=later).oldest_due_age_seconds == 0.0, "due from the redrive, not from before"


def test_held_orders_are_offered_oldest_held_first_unless_another_poller_holds_them(db: Database) -> None:
    accepted = [prescription_id for prescription_id, _ in accept(db, count=6, seed=53)]
    now = system_clock()
    first, second, third, ended, leased, done = accepted
    held_at = {
        first: now - timedelta(minutes=2),
        second: now - timedelta(minutes=3),
        third: now - timedelta(minutes=2),
    }
    ids = {
        first: set_order(db, first, state="held", held_at=held_at[first], due_at=now),
        second: set_order(db, second, state="held", held_at=held_at[second], due_at=now),
        # Held at the same moment as `first`: the older row goes first.
        third: set_order(db, third, state="held", held_at=held_at[third], due_at=now - timedelta(hours=1)),
        ended: set_order(
            db, ended, state="held", held_at=now - timedelta(minutes=1), lease_owner="p1", lease_until=now
        ),
        leased: set_order(
            db, leased, state="held", held_at=now, lease_owner="p1", lease_until=now + timedelta(seconds=1)
        ),
        done: set_order(db, done, state="done", held_at=now - timedelta(minutes=9)),
    }
    # A cancellation held for the provider to pull is no order to offer.
    put_message(db, first, state="held", held_at=now - timedelta(minutes=9))
    with db.transaction() as tx:
        offered = outbox.unleased_held_orders(tx, provider_ods="VNCEL", now=now, limit=10)
        overdue = outbox.held_too_long(
            tx, provider_ods="VNCEL", held_before=now - timedelta(seconds=90), limit=1
        )
        just_in_time = outbox.held_too_long(tx, provider_ods="VNCEL", held_before=held_at[second], limit=10)
    assert [order.outbox_id for order in offered] == [ids[second], ids[first], ids[third], ids[ended]], (
        "oldest held first; a lease that ends now is over"
    )
    assert [order.prescription_id for order in offered] == [second, first, third, ended]
    assert [order.outbox_id for order in overdue] == [ids[second]], "no more than asked for"
    assert just_in_time == [], "held since the limit itself: not too long yet"


def test_a_held_orders_lease_names_its_holder_in_at_most_80_characters(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=54)
    now = system_clock()
    outbox_id = set_order(db, prescription_id, state="held", held_at=now)
    with db.transaction() as tx:
        outbox.lease_held_orders(tx, [outbox_id], holder="poller-" + "x" * 100, until=now, now=now)
    with db.read() as session:
        holder = session.execute(select(_OUTBOX.c.lease_owner).where(_OUTBOX.c.id == outbox_id)).scalar_one()
    assert holder == ("poller-" + "x" * 100)[:80]


def test_an_acknowledgement_finishes_its_prescriptions_pulled_order_and_nothing_else(db: Database) -> None:
    (pulled, _), (pushed, _), (withdrawn, _) = accept(db, count=3, seed=55)
    now = system_clock()
    order = set_order(db, pulled, state="held", held_at=now)
    held_cancel = put_message(db, pulled, state="held", held_at=now)
    dead_push = set_order(db, pushed, state="dead")
    cancelled = set_order(db, withdrawn, state="cancelled", held_at=now)
    with db.transaction() as tx:
        assert outbox.finish_pulled_order(tx, pulled, now=now)
        assert not outbox.finish_pulled_order(tx, pushed, now=now), "never held: not pulled"
        assert not outbox.finish_pulled_order(tx, withdrawn, now=now), "withdrawn before it was pulled"
    assert states_of(db, order, held_cancel, dead_push, cancelled) == ["done", "held", "dead", "cancelled"]


def test_held_cancellations_are_finished_for_their_prescription_only(db: Database) -> None:
    (answered, _), (other, _) = accept(db, count=2, seed=56)
    now = system_clock()
    order = set_order(db, answered, state="held", held_at=now)
    held_cancel = put_message(db, answered, state="held", held_at=now)
    queued_cancel = put_message(db, answered, state="pending")
    others_cancel = put_message(db, other, state="held", held_at=now)
    with db.transaction() as tx:
        outbox.finish_held_cancellations(tx, answered, now=now)
    assert states_of(db, order, held_cancel, queued_cancel, others_cancel) == [
        "held",
        "done",
        "pending",
        "held",
    ]


def test_withdrawing_an_order_leaves_the_notifications_and_cancels_of_its_prescription(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=57)
    now = system_clock()
    order = set_order(db, prescription_id, state="pending")
    notification = put_message(
        db, prescription_id, state="pending", kind="notification", subscription_id=a_subscription(db)
    )
    cancel = put_message(db, prescription_id, state="pending")
    with db.transaction() as tx:
        outbox.withdraw_order(tx, prescription_id, now=now)
    assert states_of(db, order, notification, cancel) == ["cancelled", "pending", "pending"]


def test_an_order_held_after_a_failed_attempt_keeps_no_stale_error(db: Database) -> None:
    accept(db, seed=58)
    now = system_clock()
    recorded = claim_and_fail(db, now=now, retry_at=now)
    assert recorded is Recorded.RETRY
    [again] = outbox.claim_due(db, owner="w1", now=now, lease=timedelta(seconds=30), limit=1)
    assert isinstance(again, ClaimedMessage) and again.attempts == 1
    with db.transaction() as tx:
        recorded = record_provider_outcome(
            tx, again, DeliveryOutcome.held("pulled"), owner="w1", now=now, retry_at=None, listener=None
        )
    assert recorded is Recorded.HELD
    with db.read() as session:
        row = session.execute(
            select(_OUTBOX.c.state, _OUTBOX.c.last_error, _OUTBOX.c.lease_owner).where(
                _OUTBOX.c.id == again.outbox_id
            )
        ).one()
    assert tuple(row) == ("held", None, None)


def test_an_accepted_order_is_queued_due_at_once_under_its_prescriptions_key(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=59)
    with db.read() as session:
        row = session.execute(select(_OUTBOX).where(_OUTBOX.c.prescription_id == prescription_id)).one()
    assert (row.kind, row.provider_ods, row.state, row.attempts) == ("new", "VNCEL", "pending", 0)
    assert (row.idempotency_key, row.ordering_key) == (f"order-{prescription_id}", prescription_id)
    assert (row.message_id, row.subscription_id, row.payload, row.last_error) == (None, None, None, None)
    assert (row.lease_owner, row.lease_until, row.held_at) == (None, None, None)
    assert row.created_at == row.updated_at == row.due_at


def test_claims_take_the_oldest_due_first_up_to_the_limit_and_lease_them(db: Database) -> None:
    (late, late_body), (early, _), (tied, _), (future, _) = accept(db, count=4, seed=60)
    now = system_clock()
    # The later row changed first: on PostgreSQL it now lies before the earlier one in the table.
    set_order(db, tied, due_at=now - timedelta(minutes=1))
    set_order(db, late, due_at=now - timedelta(minutes=1))
    set_order(db, early, due_at=now - timedelta(minutes=2))
    set_order(db, future, due_at=now + timedelta(seconds=1))
    [first] = outbox.claim_due(db, owner="w1", now=now, lease=timedelta(seconds=30), limit=1)
    assert first.prescription_id == early, "the oldest due first"
    [claimed] = outbox.claim_due(db, owner="w2", now=now, lease=timedelta(seconds=30), limit=1)
    assert claimed.prescription_id == late, "same due time: the older row"
    rest = outbox.claim_due(db, owner="w2", now=now, lease=timedelta(seconds=30), limit=10)
    assert [message.prescription_id for message in rest] == [tied]
    assert isinstance(claimed, ClaimedMessage)
    with db.read() as session:
        request_id = session.execute(
            text(
                "SELECT m.request_id FROM inbound_message m JOIN prescription p ON p.message_id = m.id"
                " WHERE p.id = :id"
            ),
            {"id": late},
        ).scalar_one()
        short_form_id = session.execute(
            text("SELECT short_form_id FROM prescription WHERE id = :id"), {"id": late}
        ).scalar_one()
    assert claimed == ClaimedMessage(
        outbox_id=claimed.outbox_id,
        prescription_id=late,
        kind="new",
        provider_ods="VNCEL",
        idempotency_key=f"order-{late}",
        attempts=0,
        short_form_id=short_form_id,
        tenant_ods="RBA",
        body=late_body,
        request_id=request_id,
    )
    with db.read() as session:
        leases = session.execute(
            select(_OUTBOX.c.prescription_id, _OUTBOX.c.state, _OUTBOX.c.lease_owner, _OUTBOX.c.lease_until)
            .where(_OUTBOX.c.kind == "new")
            .order_by(_OUTBOX.c.id)
        ).all()
    until = now + timedelta(seconds=30)
    assert [tuple(row) for row in leases] == [
        (late, "sending", "w2", until),
        (early, "sending", "w1", until),
        (tied, "sending", "w2", until),
        (future, "pending", None, None),
    ]


def test_a_lease_ending_this_instant_still_holds_and_a_message_due_this_instant_is_due(db: Database) -> None:
    (leased, _), (due, _) = accept(db, count=2, seed=61)
    now = system_clock()
    set_order(db, leased, state="sending", lease_owner="w1", lease_until=now, due_at=now - timedelta(hours=1))
    set_order(db, due, due_at=now)
    claimed = outbox.claim_due(db, owner="w2", now=now, lease=timedelta(seconds=30), limit=10)
    assert [message.prescription_id for message in claimed] == [due]


def test_a_message_waits_only_behind_earlier_unfinished_messages_of_its_own_key(db: Database) -> None:
    (waiting, _), (free, _), (after_dead, _) = accept(db, count=3, seed=62)
    now = system_clock()
    set_order(db, waiting, state="sending", lease_owner="w1", lease_until=now + timedelta(seconds=30))
    blocked = put_message(db, waiting, state="pending")
    set_order(db, free, state="done")
    after_done = put_message(db, free, state="pending")
    set_order(db, after_dead, state="dead")
    cancel_after_dead = put_message(db, after_dead, state="pending")
    claimed = outbox.claim_due(db, owner="w2", now=system_clock(), lease=timedelta(seconds=30), limit=10)
    assert [message.outbox_id for message in claimed] == [after_done, cancel_after_dead]
    assert states_of(db, blocked) == ["pending"]


def test_claims_hold_back_skipped_providers_but_not_notifications_about_their_prescriptions(
    db: Database,
) -> None:
    (to_vncel, _), (to_vnfkt, _) = accept(db, count=2, seed=63)
    set_order(db, to_vnfkt, provider_ods="VNFKT")
    subscription_id = a_subscription(db)
    notification = put_message(
        db,
        to_vnfkt,
        state="pending",
        kind="notification",
        provider_ods="VNFKT",
        subscription_id=subscription_id,
        payload=b'{"resourceType": "Bundle"}',
    )
    now = system_clock() + timedelta(seconds=1)
    lease = timedelta(seconds=30)
    providers_only = outbox.claim_due(db, owner="w0", now=now, lease=lease, limit=10, notifications=False)
    assert [message.prescription_id for message in providers_only] == [to_vncel, to_vnfkt]
    with db.transaction() as tx:
        for message in providers_only:
            outbox.release_claim(tx, "w0", message.outbox_id, now=now, state="pending")
    claimed = outbox.claim_due(
        db, owner="w1", now=now, lease=lease, limit=10, skip_providers=frozenset({"VNFKT"})
    )
    assert [message.outbox_id for message in claimed] == [providers_only[0].outbox_id, notification]
    assert claimed[1] == outbox.ClaimedNotification(
        outbox_id=notification,
        subscription_id=subscription_id,
        prescription_id=to_vnfkt,
        idempotency_key=claimed[1].idempotency_key,
        attempts=0,
        payload=b'{"resourceType": "Bundle"}',
        endpoint="http://127.0.0.1:9/hook",
        headers=(),
        subscription_status="active",
    )
    assert claimed[1].idempotency_key.startswith("notification-")


_LANE_PROVIDERS = ("VNCEL", "VNFKT", "GONE1")  # the last is no longer registered


def some_outbox(db: Database, rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """An outbox of 60 rows in place of whatever it held: each kind, state, provider and due time
    (some the same), some sharing an ordering key. The rows as written, with their ids."""
    prescriptions = [prescription_id for prescription_id, _ in accept(db, count=3, seed=rng.randrange(1000))]
    subscription_id = a_subscription(db)
    rows: list[dict[str, Any]] = []
    with db.write_connection() as connection:
        connection.execute(_OUTBOX.delete())
        for index in range(60):
            kind = rng.choice(["new", "cancel", "notification"])
            state = rng.choice(
                ["pending", "pending", "pending", "sending", "sending", "done", "dead", "held"]
            )
            row = {
                "prescription_id": rng.choice(prescriptions),
                "kind": kind,
                "provider_ods": rng.choice(_LANE_PROVIDERS),
                "idempotency_key": f"{kind}-{index}",
                "ordering_key": f"key-{rng.randrange(25)}",
                "subscription_id": subscription_id if kind == "notification" else None,
                "state": state,
                "attempts": 0,
                "due_at": now + timedelta(seconds=rng.randrange(-30, 10)),
                "lease_until": now + timedelta(seconds=rng.randrange(-5, 5)) if state == "sending" else None,
                "created_at": now,
                "updated_at": now,
            }
            row["id"] = connection.execute(insert(_OUTBOX).values(**row)).inserted_primary_key[0]
            rows.append(row)
    return rows


def due_by_hand(
    rows: list[dict[str, Any]], now: datetime, limit: int, skip: frozenset[str], notifications: bool
) -> list[int]:
    """What a claim must take, worked out row by row from the outbox's rules."""

    def due(row: dict[str, Any]) -> bool:
        if row["state"] == "pending":
            return bool(row["due_at"] <= now)
        return row["state"] == "sending" and row["lease_until"] < now

    def waits(row: dict[str, Any]) -> bool:
        return any(
            other["ordering_key"] == row["ordering_key"]
            and other["id"] < row["id"]
            and other["state"] in ("pending", "sending")
            for other in rows
        )

    def held_back(row: dict[str, Any]) -> bool:
        provider_message = row["subscription_id"] is None
        return (provider_message and row["provider_ods"] in skip) or (
            not provider_message and not notifications
        )

    claimable = [row for row in rows if due(row) and not waits(row) and not held_back(row)]
    return sorted(row["id"] for row in sorted(claimable, key=lambda row: (row["due_at"], row["id"]))[:limit])


@pytest.mark.parametrize("seed", range(4))
def test_a_claim_takes_the_earliest_due_messages_whatever_is_held_back(db: Database, seed: int) -> None:
    """The claim reads lane by lane (expired leases; pending by provider and kind while providers are
    held back): together the lanes must pick exactly the rows the rules pick over the whole outbox."""
    rng = random.Random(seed)
    now = system_clock()
    lease = timedelta(seconds=30)
    for skip, notifications, limit in [
        (frozenset(), True, 50),
        (frozenset(), True, 1),
        (frozenset(), True, 2),
        (frozenset(), True, 4),
        (frozenset(), False, 50),
        (frozenset({"VNFKT"}), True, 50),
        (frozenset({"VNFKT"}), True, 3),
        (frozenset({"VNFKT"}), True, 1),
        (frozenset({"VNCEL", "GONE1"}), False, 50),
        (frozenset({"VNCEL", "GONE1"}), True, 5),
        (frozenset(_LANE_PROVIDERS), True, 50),
    ]:
        rows = some_outbox(db, rng, now)
        expected = due_by_hand(rows, now, limit, skip, notifications)
        claimed = outbox.claim_due(
            db, owner="w", now=now, lease=lease, limit=limit, skip_providers=skip, notifications=notifications
        )
        assert [message.outbox_id for message in claimed] == expected, (sorted(skip), notifications, limit)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # PostgreSQL plans by its statistics
def test_a_poll_reads_each_lane_in_index_order(db: Database) -> None:
    """Each statement of a poll reads the outbox through an index in the order it wants, never the
    whole table and never a sort: a held-back provider's backlog (or a recovered one's) costs a poll
    nothing."""
    some_outbox(db, random.Random(7), system_clock())
    statements: list[tuple[str, Any]] = []

    def capture(_connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "outbox" in statement:
            statements.append((statement, parameters))

    now = system_clock() + timedelta(seconds=60)
    for engine in {db.engine, db.write_engine}:
        event.listen(engine, "before_cursor_execute", capture)
    try:
        for skip in (frozenset(), frozenset({"VNFKT"})):
            for notifications in (True, False):
                outbox.claim_due(
                    db,
                    owner="w",
                    now=now,
                    lease=timedelta(seconds=1),
                    limit=5,
                    skip_providers=skip,
                    notifications=notifications,
                )
    finally:
        for engine in {db.engine, db.write_engine}:
            event.remove(engine, "before_cursor_execute", capture)
    lane_reads = [(sql, parameters) for sql, parameters in statements if "ORDER BY outbox.due_at" in sql]
    assert len(lane_reads) >= 8 and any("pending_provider" in sql for sql, _ in statements)
    with db.engine.connect() as connection:
        for sql, parameters in statements:
            plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters)]
            assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)
            assert not any(step.startswith("SCAN outbox") for step in plan), (sql, plan)


def backlog(db: Database, prescription_id: str, provider_ods: str, count: int, *, due: datetime) -> None:
    """`count` more pending orders to the provider, each of its own ordering key, all due."""
    rows = [
        {
            "prescription_id": prescription_id,
            "kind": "new",
            "provider_ods": provider_ods,
            "idempotency_key": f"backlog-{uuid.uuid4()}",
            "ordering_key": f"backlog-{uuid.uuid4()}",
            "state": "pending",
            "attempts": 0,
            "due_at": due,
            "created_at": due,
            "updated_at": due,
        }
        for _ in range(count)
    ]
    with db.write_connection() as connection:
        connection.execute(insert(_OUTBOX), rows)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # SQLite's count of the steps it runs
def test_a_poll_costs_the_same_whatever_the_backlog_it_skips_or_drains(db: Database) -> None:
    """What a poll runs (SQLite's virtual machine steps) does not grow with a held-back provider's
    backlog, nor with a recovering provider's due backlog it claims a few of at a time."""
    ((prescription_id, _),) = accept(db)
    now = system_clock()
    steps = [0]

    def count(connection: Any, *_: Any) -> None:
        def step() -> int:
            steps[0] += 1
            return 0

        connection.connection.dbapi_connection.set_progress_handler(step, 100)

    def cost(**options: Any) -> int:
        steps[0] = 0
        outbox.claim_due(db, owner="w", now=now, lease=timedelta(seconds=30), limit=5, **options)
        return steps[0]

    for engine in {db.engine, db.write_engine}:
        event.listen(engine, "before_cursor_execute", count)
    try:
        held_back = frozenset({"VNFKT"})
        backlog(db, prescription_id, "VNFKT", 20, due=now)
        small = cost(skip_providers=held_back)
        backlog(db, prescription_id, "VNFKT", 2000, due=now)
        large = cost(skip_providers=held_back)
        assert large <= small + 5, (small, large)
        draining = [cost(), cost()]  # VNFKT back: 2,020 due, five claimed a poll
        backlog(db, prescription_id, "VNFKT", 2000, due=now)
        assert cost() <= max(draining) + 5, draining
    finally:
        for engine in {db.engine, db.write_engine}:
            event.remove(engine, "before_cursor_execute", count)


# --- What a send's outcome does to the prescription (gateway/domain/delivery.py), directly ---------


def claim_one(db: Database, owner: str = "w1") -> ClaimedMessage:
    [claimed] = outbox.claim_due(db, owner=owner, now=system_clock(), lease=timedelta(seconds=30), limit=1)
    assert isinstance(claimed, ClaimedMessage)
    return claimed


def record(db: Database, claimed: ClaimedMessage, outcome: DeliveryOutcome, **options: Any) -> Recorded:
    heard: list[str] = options.pop("heard", [])

    def listener(tx: Tx, applied: Applied, at: Any) -> None:
        heard.append(applied.view.status)

    options.setdefault("owner", "w1")
    options.setdefault("retry_at", None)
    with db.transaction() as tx:
        return record_provider_outcome(tx, claimed, outcome, now=system_clock(), listener=listener, **options)


def item_statuses(db: Database, prescription_id: str) -> list[str]:
    with db.read() as session:
        rows = session.execute(
            text("SELECT status FROM prescription_item WHERE prescription_id = :id ORDER BY position"),
            {"id": prescription_id},
        )
        return [row[0] for row in rows]


def outbox_row(db: Database, outbox_id: int) -> tuple[Any, ...]:
    with db.read() as session:
        row = session.execute(
            select(_OUTBOX.c.state, _OUTBOX.c.attempts, _OUTBOX.c.last_error).where(_OUTBOX.c.id == outbox_id)
        ).one()
    return tuple(row)


def last_sources(db: Database, prescription_id: str, count: int) -> list[str]:
    with db.read() as session:
        rows = session.execute(
            text("SELECT source FROM status_event WHERE prescription_id = :id ORDER BY id DESC"),
            {"id": prescription_id},
        )
        return [row[0] for row in rows][:count]


def a_cancel_being_sent(db: Database, seed: int) -> tuple[str, ClaimedMessage]:
    """A prescription of two items sent to its provider, then cancelled whole: its cancel, claimed."""
    [(prescription_id, body)] = accept(db, items=2, seed=seed)
    assert record(db, claim_one(db), DeliveryOutcome.delivered()) is Recorded.DELIVERED
    answer = send_cancel(db, body)
    assert answer.status_code == 202, answer.body
    claimed = claim_one(db)
    assert claimed.kind == "cancel" and item_statuses(db, prescription_id) == ["cancel-requested"] * 2
    return prescription_id, claimed


def test_a_sent_order_moves_its_items_to_sent_with_the_attempt_that_made_it(db: Database) -> None:
    [(prescription_id, _)] = accept(db, items=2, seed=64)
    first = claim_one(db)
    assert record(db, first, DeliveryOutcome.failed("busy"), retry_at=system_clock()) is Recorded.RETRY
    assert outbox_row(db, first.outbox_id) == ("pending", 1, "busy")
    heard: list[str] = []
    assert record(db, claim_one(db), DeliveryOutcome.delivered(), heard=heard) is Recorded.DELIVERED
    assert item_statuses(db, prescription_id) == ["sent", "sent"] and heard == ["sent", "sent"]
    assert events_of(db, prescription_id)[-1] == ("sent", {"provider": "VNCEL", "attempts": 2})
    assert outbox_row(db, first.outbox_id) == ("done", 1, None)


def test_a_refused_order_is_rejected_with_the_providers_code_and_words(db: Database) -> None:
    (worded, _), (silent, _) = accept(db, count=2, seed=65)
    heard: list[str] = []
    long_reason = "Out of stock: " + "x" * 600
    recorded = record(
        db, claim_one(db), DeliveryOutcome.refused(long_reason, code="out-of-stock"), heard=heard
    )
    assert recorded is Recorded.REFUSED and heard == ["rejected"]
    assert status_of(db, worded) == "rejected"
    assert events_of(db, worded)[-1] == (
        "rejected",
        {"provider": "VNCEL", "reason": {"code": "out-of-stock", "text": long_reason[:500]}},
    )
    claimed = claim_one(db)
    assert record(db, claimed, DeliveryOutcome(OutcomeKind.REFUSED)) is Recorded.REFUSED
    assert events_of(db, silent)[-1] == (
        "rejected",
        {"provider": "VNCEL", "reason": {"code": None, "text": "rejected by the provider"}},
    )
    assert outbox_row(db, claimed.outbox_id) == ("done", 0, "rejected by the provider")


def test_an_order_out_of_tries_is_undeliverable_with_its_last_error(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=66)
    claimed = claim_one(db)
    heard: list[str] = []
    error = "connection refused " + "y" * 600
    assert record(db, claimed, DeliveryOutcome.failed(error), heard=heard) is Recorded.DEAD
    assert heard == ["undeliverable"] and status_of(db, prescription_id) == "undeliverable"
    assert events_of(db, prescription_id)[-1] == (
        "undeliverable",
        {"provider": "VNCEL", "attempts": 1, "error": error[:200]},
    )
    assert outbox_row(db, claimed.outbox_id) == ("dead", 1, error[:500])


def test_a_failure_without_words_is_recorded_as_not_delivered(db: Database) -> None:
    accept(db, seed=67)
    claimed = claim_one(db)
    assert record(db, claimed, DeliveryOutcome(OutcomeKind.FAILED), retry_at=system_clock()) is (
        Recorded.RETRY
    )
    assert outbox_row(db, claimed.outbox_id) == ("pending", 1, "not delivered")


def test_an_outcome_recorded_after_the_lease_was_lost_changes_nothing(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=68)
    claimed = claim_one(db)
    for outcome in (
        DeliveryOutcome.delivered(),
        DeliveryOutcome.refused("no"),
        DeliveryOutcome.failed("down"),
        DeliveryOutcome.held("pulled"),
    ):
        assert record(db, claimed, outcome, owner="someone-else") is Recorded.LEASE_LOST
    assert record(
        db, claimed, DeliveryOutcome.failed("down"), owner="someone-else", retry_at=system_clock()
    ) is (Recorded.LEASE_LOST)
    assert status_of(db, prescription_id) == "queued"
    assert outbox_row(db, claimed.outbox_id) == ("sending", 0, None)


def test_a_cancel_taken_by_the_provider_cancels_every_item_waiting_for_it(db: Database) -> None:
    prescription_id, claimed = a_cancel_being_sent(db, seed=69)
    heard: list[str] = []
    assert record(db, claimed, DeliveryOutcome.delivered(), heard=heard) is Recorded.DELIVERED
    assert item_statuses(db, prescription_id) == ["cancelled", "cancelled"] and heard == ["cancelled"] * 2
    assert events_of(db, prescription_id)[-1] == ("cancelled", {"cancellation_answer": "agreed"})
    assert last_sources(db, prescription_id, 2) == ["provider:VNCEL"] * 2, "the provider's answer, not ours"


def test_a_cancel_whose_answer_follows_leaves_the_items_waiting(db: Database) -> None:
    prescription_id, claimed = a_cancel_being_sent(db, seed=70)
    assert record(db, claimed, DeliveryOutcome.delivered(answer_follows=True)) is Recorded.DELIVERED
    assert item_statuses(db, prescription_id) == ["cancel-requested", "cancel-requested"]
    assert outbox_row(db, claimed.outbox_id) == ("done", 0, None)


def test_a_cancel_the_provider_refuses_puts_the_items_back_with_its_reason(db: Database) -> None:
    prescription_id, claimed = a_cancel_being_sent(db, seed=71)
    heard: list[str] = []
    outcome = DeliveryOutcome(
        DeliveryOutcome.refused("x").kind, reason="already dispensed", answer_follows=True
    )
    assert record(db, claimed, outcome, heard=heard) is Recorded.REFUSED
    assert item_statuses(db, prescription_id) == ["sent", "sent"] and heard == ["sent", "sent"]
    assert events_of(db, prescription_id)[-1] == (
        "sent",
        {"cancellation_answer": "refused", "reason": {"code": None, "text": "already dispensed"}},
    )
    assert last_sources(db, prescription_id, 2) == ["provider:VNCEL"] * 2


def test_a_cancel_out_of_tries_is_dead_and_leaves_the_items_waiting(db: Database) -> None:
    prescription_id, claimed = a_cancel_being_sent(db, seed=72)
    assert record(db, claimed, DeliveryOutcome.failed("down")) is Recorded.DEAD
    assert item_statuses(db, prescription_id) == ["cancel-requested", "cancel-requested"]
    assert outbox_row(db, claimed.outbox_id) == ("dead", 1, "down")


def test_a_cancel_held_for_a_pull_provider_waits_for_the_providers_answer(db: Database) -> None:
    prescription_id, claimed = a_cancel_being_sent(db, seed=73)
    assert record(db, claimed, DeliveryOutcome.held("pulled"), owner="someone-else") is Recorded.LEASE_LOST
    assert record(db, claimed, DeliveryOutcome.held("pulled")) is Recorded.HELD
    assert outbox_row(db, claimed.outbox_id) == ("held", 0, None)
    assert item_statuses(db, prescription_id) == ["cancel-requested", "cancel-requested"]


def test_a_cancel_the_provider_answered_before_it_was_held_is_done(db: Database) -> None:
    """A pull provider reads `cancel-requested` items, not the message: its answer may come first."""
    prescription_id, claimed = a_cancel_being_sent(db, seed=74)
    with db.transaction() as tx:
        provider_answered_cancel(
            tx,
            prescription_id=prescription_id,
            provider_ods="VNCEL",
            agreed=True,
            reason=None,
            now=system_clock(),
            listener=None,
        )
    assert record(db, claimed, DeliveryOutcome.held("pulled"), owner="someone-else") is Recorded.LEASE_LOST
    assert record(db, claimed, DeliveryOutcome.held("pulled")) is Recorded.DELIVERED
    assert outbox_row(db, claimed.outbox_id) == ("done", 0, None)


def test_an_order_for_a_pull_provider_is_held_with_the_adapters_words(db: Database) -> None:
    """What the dispatcher logs for the operator: why nothing was sent."""
    with db.write() as session:
        update_provider(
            session,
            "VNCEL",
            now=system_clock(),
            adapter="pull",
            settings={"lease_seconds": 10, "unpulled_alert_seconds": 60},
        )
    [(prescription_id, _)] = accept(db, seed=75)
    claimed = claim_one(db)
    outcome = deliver_once(db, claimed)
    assert outcome.kind is OutcomeKind.HELD
    assert outcome.reason is not None and "held for VNCEL to pull" in outcome.reason
    assert record(db, claimed, outcome) is Recorded.HELD and status_of(db, prescription_id) == "queued"


def test_a_held_order_whose_pollers_lease_ran_out_is_not_claimed_by_a_dispatcher(db: Database) -> None:
    [(prescription_id, _)] = accept(db, seed=76)
    now = system_clock()
    set_order(
        db, prescription_id, state="held", held_at=now, lease_owner="pull:provider-vncel", lease_until=now
    )
    later = now + timedelta(seconds=1)
    assert outbox.claim_due(db, owner="w1", now=later, lease=timedelta(seconds=30), limit=10) == []
    assert outbox.stats(db, now=later).due == 0, "the provider pulls it: nothing is due to be sent"


def test_a_busy_providers_retry_after_reaches_the_retry_policy(db: Database) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def busy(request: Request) -> Response:
        return Response(status_code=503, headers={"Retry-After": "7"})

    busy_provider = Starlette(routes=[Route("/{path:path}", busy, methods=["GET", "POST", "PUT"])])
    with RunningServer(busy_provider) as provider:
        with db.write() as session:
            update_provider(
                session,
                "VNCEL",
                now=system_clock(),
                settings={"base_url": provider.base_url, "timeout_seconds": 2.0},
            )
        accept(db, seed=77)
        claimed = claim_one(db)
        outcome = deliver_once(db, claimed)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.retry_after == 7, "the provider said when to come back"
