"""`pull` end to end: a trust over HTTP, the real gateway (API and runtime) on SQLite and PostgreSQL, and
the polling provider simulator fetching its orders with its own signed JWT and acknowledging them with
Task updates."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from auth.identity import Caller, Role
from fhir_profiles.builder import build_cancellation
from gateway.clock import system_clock
from gateway.domain.context import Context
from gateway.domain.delivery import redrive
from gateway.domain.pull import offer_queued_orders
from gateway.runner import Runtime
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.outbox import stats
from tests.adapters.test_pull import polling_provider
from tests.e2e_support import HAPPY_PATH, applied_statuses, history, rows, scalar
from tests.runtime_support import running_gateway, use_adapter
from tests.support import RunningServer, Tenant
from tests.test_lifecycle_e2e import FHIR, send_order, statuses, wait_until

PULL_SETTINGS = {"lease_seconds": 10, "unpulled_alert_seconds": 60}


class ShiftedClock:
    """The system clock, moved on by the test (the gateway's runtime; the API keeps real time)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return system_clock() + self.offset


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def gateway(db: Database, settings: Settings, clock: ShiftedClock) -> Iterator[Runtime]:
    use_adapter(db, "VNCEL", "pull", PULL_SETTINGS)
    with running_gateway(db, settings, clock=clock) as runtime:
        yield runtime


def held(db: Database) -> int:
    return int(scalar(db, "SELECT count(*) FROM outbox WHERE state = 'held'"))


def task_for(item: str, message: dict[str, Any], status: str, minute: int, **extra: Any) -> bytes:
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    task = {
        "resourceType": "Task",
        "id": item,
        "status": "in-progress",
        "intent": "order",
        "basedOn": [{"identifier": request["groupIdentifier"]}],
        "focus": {"identifier": request["identifier"][0]},
        "businessStatus": {
            "coding": [
                {"system": "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status", "code": status}
            ]
        },
        "lastModified": (datetime.now(UTC) + timedelta(minutes=minute)).isoformat(),
        "owner": {"identifier": request["dispenseRequest"]["performer"]["identifier"]},
        **extra,
    }
    return orjson.dumps(task)


def test_a_pulled_order_is_sent_when_acknowledged_and_reported_to_delivered(
    client: httpx.Client,
    db: Database,
    gateway: Runtime,
    server: RunningServer,
    tenants: dict[str, Tenant],
) -> None:
    _, items = send_order(client, items=2, seed=301)
    wait_until(lambda: held(db) == 1)
    assert statuses(client, items) == ["queued", "queued"], "held: nothing is sent to a pull provider"
    with polling_provider(server, tenants["provider-vncel"]) as provider:
        wait_until(lambda: statuses(client, items) == ["delivered", "delivered"])
    for item in items:
        assert applied_statuses(client, item) == ["received", "queued", "sent", *HAPPY_PATH]
        sent = [source for status, source, _ in history(client, item) if status == "sent"]
        assert sent == ["gateway"]
    (order,) = provider.orders()
    assert order.message.startswith(b"{"), "the Bundle named in Task.input, read as sent"
    assert rows(db, "SELECT state, lease_owner FROM outbox") == [("done", None)]
    assert {update.http_status for update in provider.task_updates()} == {200}


def test_the_queued_search_leases_each_order_to_one_poller(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    for seed in range(302, 310):
        send_order(client, items=1 + seed % 2, seed=seed)
    wait_until(lambda: held(db) == 8)
    pollers = [as_tenant("provider-vncel"), as_tenant("provider-vncel")]
    taken: list[list[str]] = [[], []]
    orders_a_page: list[int] = []

    def poll(number: int) -> None:
        while True:
            found = pollers[number].get(
                "/fhir/Task", params={"owner": "VNCEL", "business-status": "queued", "_count": "2"}
            )
            assert found.status_code == 200, found.text
            entries = found.json().get("entry", [])
            if not entries:
                return
            page = [entry["resource"]["basedOn"][0]["identifier"]["value"] for entry in entries]
            orders_a_page.append(len(set(page)))
            taken[number] += page

    threads = [threading.Thread(target=poll, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not set(taken[0]) & set(taken[1]), "no order offered to both pollers"
    assert max(orders_a_page) <= 2, "_count=2: at most two orders a page"
    assert len(set(taken[0]) | set(taken[1])) == 8, "every order offered once"
    reader = as_tenant("provider-vncel").get(
        "/fhir/Task", params={"owner": "VNCEL", "business-status": "queued,sent"}
    )
    assert len(reader.json()["entry"]) == 12, "other searches only read: leased orders stay visible"
    leases = rows(db, "SELECT lease_owner FROM outbox")
    assert {lease for (lease,) in leases} == {"pull:provider-vncel"}


def test_each_offered_task_names_the_message_bundle_to_read(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, _ = send_order(client, items=1, seed=311)
    wait_until(lambda: held(db) == 1)
    provider = as_tenant("provider-vncel")
    (entry,) = provider.get("/fhir/Task", params={"owner": "VNCEL", "business-status": "queued"}).json()[
        "entry"
    ]
    (task_input,) = entry["resource"]["input"]
    assert task_input["type"]["coding"][0]["code"] == "prescription-message"
    bundle = provider.get(f"/fhir/{task_input['valueReference']['reference']}")
    assert bundle.status_code == 200 and bundle.json()["identifier"] == message["identifier"]
    again = provider.get("/fhir/Task", params={"owner": "VNCEL", "business-status": "queued"}).json()
    assert again.get("entry", []) == [], "leased: not offered again until the lease ends"


def test_an_order_the_provider_rejects_is_sent_then_rejected(
    client: httpx.Client, db: Database, gateway: Runtime, server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    _, (item,) = send_order(client, items=1, seed=312)
    with polling_provider(server, tenants["provider-vncel"], reject_rate=1.0):
        wait_until(lambda: statuses(client, [item]) == ["rejected"])
    assert [(status, source) for status, source, _ in history(client, item)][-2:] == [
        ("sent", "gateway"),
        ("rejected", "provider:VNCEL"),
    ]
    assert client.get(f"/fhir/Task/{item}").json()["statusReason"]["text"]


def test_an_order_nobody_pulls_in_time_is_undeliverable_and_a_late_acknowledgement_takes_it_back(
    client: httpx.Client,
    db: Database,
    gateway: Runtime,
    clock: ShiftedClock,
    as_tenant: Callable[..., httpx.Client],
) -> None:
    message, (item,) = send_order(client, items=1, seed=313)
    wait_until(lambda: held(db) == 1)
    clock.offset = timedelta(seconds=61)
    wait_until(lambda: statuses(client, [item]) == ["undeliverable"])
    figures = stats(db, now=clock())
    assert figures.by_provider_dead == {"VNCEL": 1}, "the alert of a failed push: a dead letter"
    dead_letter = scalar(db, "SELECT last_error FROM outbox WHERE kind = 'new'")
    assert dead_letter.startswith("not acknowledged by the provider within"), "why, for the operator"
    provider = as_tenant("provider-vncel")
    late = provider.put(f"/fhir/Task/{item}", content=task_for(item, message, "accepted", 1), headers=FHIR)
    assert late.status_code == 200, late.text
    assert applied_statuses(client, item) == [
        "received",
        "queued",
        "undeliverable",
        "queued",
        "sent",
        "accepted",
    ]
    assert stats(db, now=clock()).dead == 0
    assert rows(db, "SELECT state, last_error FROM outbox") == [("done", None)], "no stale reason"


def test_only_the_order_held_too_long_is_given_up_and_an_acknowledgement_finishes_only_its_own(
    client: httpx.Client,
    db: Database,
    gateway: Runtime,
    clock: ShiftedClock,
    as_tenant: Callable[..., httpx.Client],
) -> None:
    _, (late,) = send_order(client, items=1, seed=321)
    wait_until(lambda: held(db) == 1)
    clock.offset = timedelta(seconds=40)
    message, (recent,) = send_order(client, items=1, seed=322)
    wait_until(lambda: held(db) == 2)
    clock.offset = timedelta(seconds=61)
    wait_until(lambda: statuses(client, [late]) == ["undeliverable"])
    assert statuses(client, [recent]) == ["queued"], "held 21 s of its 60: still waiting"
    assert held(db) == 1
    provider = as_tenant("provider-vncel")
    ack = provider.put(f"/fhir/Task/{recent}", content=task_for(recent, message, "accepted", 1), headers=FHIR)
    assert ack.status_code == 200, ack.text
    assert rows(db, "SELECT state FROM outbox ORDER BY id") == [("dead",), ("done",)]


def test_a_pull_provider_is_offered_only_its_own_held_orders(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    use_adapter(db, "VNFKT", "pull", PULL_SETTINGS)
    send_order(client, items=1, seed=323)
    wait_until(lambda: held(db) == 1)
    other = as_tenant("provider-vnfkt").get(
        "/fhir/Task", params={"owner": "VNFKT", "business-status": "queued", "_count": "5"}
    )
    assert other.status_code == 200, other.text
    assert other.json().get("entry", []) == []
    assert rows(db, "SELECT lease_owner FROM outbox") == [(None,)], "not leased to the other provider"


def test_an_unpulled_order_redriven_is_held_again(
    client: httpx.Client, db: Database, gateway: Runtime, clock: ShiftedClock
) -> None:
    _, (item,) = send_order(client, items=1, seed=314)
    wait_until(lambda: held(db) == 1)
    clock.offset = timedelta(seconds=61)
    wait_until(lambda: statuses(client, [item]) == ["undeliverable"])
    assert redrive(Context(db, clock=clock), provider_ods="VNCEL") == 1
    wait_until(lambda: held(db) == 1)
    assert statuses(client, [item]) == ["queued"]


def test_a_provider_that_stops_polling_finds_its_orders_waiting_when_back(
    client: httpx.Client, db: Database, gateway: Runtime, server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    with polling_provider(server, tenants["provider-vncel"], down=True) as provider:
        _, (item,) = send_order(client, items=1, seed=315)
        wait_until(lambda: held(db) == 1)
        assert statuses(client, [item]) == ["queued"]
        provider.configure(down=False)
        wait_until(lambda: statuses(client, [item]) == ["delivered"])
    assert len(provider.orders()) == 1


def test_a_malformed_acknowledgement_is_refused_and_changes_nothing(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    _, (item,) = send_order(client, items=1, seed=316)
    wait_until(lambda: held(db) == 1)
    provider = as_tenant("provider-vncel")
    answer = provider.put(
        f"/fhir/Task/{item}", content=b'{"resourceType": "Task", "status": 7}', headers=FHIR
    )
    assert answer.status_code == 400
    assert statuses(client, [item]) == ["queued"] and held(db) == 1


def test_a_repeated_acknowledgement_is_applied_once(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, (item,) = send_order(client, items=1, seed=317)
    wait_until(lambda: held(db) == 1)
    provider = as_tenant("provider-vncel")
    body = task_for(item, message, "accepted", 1)
    first = provider.put(f"/fhir/Task/{item}", content=body, headers=FHIR)
    again = provider.put(f"/fhir/Task/{item}", content=body, headers=FHIR)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["X-Status-Verdict"] == "duplicate"
    assert applied_statuses(client, item) == ["received", "queued", "sent", "accepted"]


def test_another_provider_neither_sees_nor_acknowledges_these_orders(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, (item,) = send_order(client, items=1, seed=318)
    wait_until(lambda: held(db) == 1)
    other = as_tenant("provider-vnfkt")
    assert other.get("/fhir/Task", params={"business-status": "queued"}).json().get("entry", []) == []
    answer = other.put(f"/fhir/Task/{item}", content=task_for(item, message, "accepted", 1), headers=FHIR)
    assert answer.status_code in (403, 404)
    assert statuses(client, [item]) == ["queued"] and held(db) == 1


def test_a_cancellation_before_the_acknowledgement_withdraws_the_order(
    client: httpx.Client, db: Database, gateway: Runtime, as_tenant: Callable[..., httpx.Client]
) -> None:
    message, (item,) = send_order(client, items=1, seed=319)
    wait_until(lambda: held(db) == 1)
    response = client.post(
        "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
    )
    assert response.status_code == 200 and "had not yet received" in response.text
    late = as_tenant("provider-vncel").put(
        f"/fhir/Task/{item}", content=task_for(item, message, "accepted", 1), headers=FHIR
    )
    assert late.status_code == 409, "the provider learns the order is cancelled"
    assert statuses(client, [item]) == ["cancelled"]


def test_a_cancellation_after_the_acknowledgement_is_answered_by_the_poller(
    client: httpx.Client, db: Database, gateway: Runtime, server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    with polling_provider(server, tenants["provider-vncel"]) as provider:
        provider.configure(step_delays={"in-preparation": 30})
        message, (item,) = send_order(client, items=1, seed=320)
        wait_until(lambda: statuses(client, [item]) == ["accepted"])
        response = client.post(
            "/fhir/$process-message", content=orjson.dumps(build_cancellation(message)), headers=FHIR
        )
        assert response.status_code in (200, 202), response.text
        wait_until(lambda: statuses(client, [item]) == ["cancelled"])
        assert provider.orders()[0].item_statuses[item_identifier(client, item)] == "cancelled"
    assert rows(db, "SELECT kind, state FROM outbox ORDER BY id") == [("new", "done"), ("cancel", "done")]


def item_identifier(client: httpx.Client, item: str) -> str:
    return str(client.get(f"/fhir/Task/{item}").json()["focus"]["identifier"]["value"])


def test_an_order_whose_lease_ended_unacknowledged_is_offered_again(
    client: httpx.Client, db: Database, gateway: Runtime
) -> None:
    send_order(client, items=2, seed=321)
    wait_until(lambda: held(db) == 1)
    later = ShiftedClock()
    poller = Caller("provider-vncel", Role.PROVIDER, "VNCEL")
    context = Context.for_database(db, clock=later)
    try:
        first = offer_queued_orders(context, caller=poller, count=10)
        assert len(first) == 2, "both items of the one prescription, together"
        assert offer_queued_orders(context, caller=poller, count=10) == []
        later.offset = timedelta(seconds=PULL_SETTINGS["lease_seconds"] + 1)
        again = offer_queued_orders(context, caller=poller, count=10)
    finally:
        context.close()
    assert [item.view.item_id for item in again] == [item.view.item_id for item in first]
