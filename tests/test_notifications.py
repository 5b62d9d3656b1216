"""Notifications over real sockets on both backends: queued by `enqueue_notifications` in the
transaction of a status change, sent by the dispatcher to a receiver that verifies every signature
with the JWKS the running gateway publishes, in order, retried, and the subscription put in error.

Each test changes status as status intake does: `enqueue_notifications` inside a transaction
(`db.transaction()`) with a hand-built Task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import text

from auth.identity import Caller, Role
from auth.signing import SigningKeys
from fhir_profiles.builder import PrescriptionMessageBuilder
from fhir_profiles.codes import HOMECARE_STATUS_SYSTEM
from fhir_profiles.identifiers import ODS_SYSTEM, PRESCRIPTION_ORDER_NUMBER_SYSTEM
from gateway.api.metrics import admin_app
from gateway.clock import system_clock
from gateway.dispatch.policy import RetryPolicy
from gateway.dispatch.settings import DispatcherSettings
from gateway.dispatch.worker import Dispatcher
from gateway.domain.context import Context
from gateway.domain.intake import receive_message_blocking
from gateway.logs import configure_logging
from gateway.notify.delivery import UNREACHABLE
from gateway.notify.receiver import ReceiverServer
from gateway.notify.service import enqueue_notifications
from gateway.notify.signature import SignatureError, sign_detached, verify_detached
from gateway.settings import Settings
from gateway.store import outbox
from gateway.store.db import Database
from tests.support import RunningServer, free_port

AsTenant = Callable[..., httpx.Client]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
FAST = DispatcherSettings(
    poll_seconds=0.02,
    lease_seconds=5,
    max_in_flight=16,
    retry=RetryPolicy(base_seconds=0.02, cap_seconds=0.1, max_attempts=20),
    breaker_threshold=1000,
    breaker_cooldown_seconds=0,
    notification_timeout_seconds=2.0,
    subscription_error_after=3,
    allow_loopback_subscribers=True,
)
SECRET = "Bearer subscriber-secret-7f3a"


@pytest.fixture
def endpoint(server: RunningServer, db: Database) -> Iterator[ReceiverServer]:
    """A subscriber's endpoint that verifies signatures with the test gateway's published keys."""
    with ReceiverServer(jwks_url=f"{server.base_url}/.well-known/jwks.json") as receiving:
        yield receiving


@pytest.fixture
def signing_keys(settings: Settings) -> SigningKeys:
    """The keys of the running test gateway, which the dispatcher signs with."""
    return SigningKeys(settings.resolved_signing_keys_dir)


def subscribe(http: httpx.Client, endpoint_url: str, criteria: str = "Task", *, payload: bool = True) -> str:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint_url,
        "header": [f"Authorization: {SECRET}"],
    }
    if payload:
        channel["payload"] = "application/fhir+json"
    response = http.post(
        "/fhir/Subscription",
        content=orjson.dumps(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "test",
                "criteria": criteria,
                "channel": channel,
            }
        ),
        headers=FHIR_JSON,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


class Prescription:
    """An accepted prescription (its order already sent), whose line item changes status."""

    def __init__(self, db: Database, *, sender: str = "RBA", provider: str = "VNCEL", seed: int = 1) -> None:
        caller = Caller(
            f"trust-{sender.lower()}", Role.TRUST, sender, frozenset({"system/MedicationRequest.c"})
        )
        body = orjson.dumps(
            PrescriptionMessageBuilder(seed=seed).build(items=1, sender_ods=sender, performer_ods=provider)
        )
        context = Context.for_database(db)
        answer = receive_message_blocking(
            context, body=body, document=orjson.loads(body), caller=caller, request_id=str(uuid.uuid4())
        )
        context.close()
        assert answer.prescription_id is not None
        self.db, self.id, self.tenant, self.provider = db, answer.prescription_id, sender, provider
        with db.write_connection() as connection:
            self.item_id, self.short_form = connection.execute(
                text(
                    "SELECT i.id, p.short_form_id FROM prescription_item i "
                    "JOIN prescription p ON p.id = i.prescription_id WHERE p.id = :id"
                ),
                {"id": self.id},
            ).one()
            # The order went to the provider long ago: these tests are about notifications.
            connection.execute(
                text("UPDATE outbox SET state = 'done' WHERE prescription_id = :id"), {"id": self.id}
            )

    def task(self, status: str, modified: datetime) -> dict[str, Any]:
        """The line item's Task as status intake will build it."""
        return {
            "resourceType": "Task",
            "id": self.item_id,
            "status": "in-progress",
            "intent": "order",
            "basedOn": [
                {"identifier": {"system": PRESCRIPTION_ORDER_NUMBER_SYSTEM, "value": self.short_form}}
            ],
            "focus": {"reference": f"MedicationRequest/{self.item_id}"},
            "businessStatus": {"coding": [{"system": HOMECARE_STATUS_SYSTEM, "code": status}]},
            "owner": {"identifier": {"system": ODS_SYSTEM, "value": self.provider}},
            "requester": {"identifier": {"system": ODS_SYSTEM, "value": self.tenant}},
            "lastModified": modified.isoformat(),
        }

    def changes_to(self, status: str, *, now: datetime | None = None) -> tuple[int, bytes]:
        """Change status as status intake will: in one transaction with the notifications it queues."""
        moment = now or datetime.now(UTC)
        task = self.task(status, moment)
        with self.db.transaction() as tx:
            queued = enqueue_notifications(
                tx,
                tenant_ods=self.tenant,
                provider_ods=self.provider,
                prescription_id=self.id,
                task=task,
                business_status=status,
                now=moment,
            )
        return queued, orjson.dumps(task)


def notification_rows(db: Database) -> list[dict[str, Any]]:
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT id, subscription_id, state, attempts, payload, ordering_key, kind, last_error "
                "FROM outbox WHERE subscription_id IS NOT NULL ORDER BY id"
            )
        ).mappings()
        return [dict(row) for row in rows]


def subscription_row(db: Database, subscription_id: str) -> dict[str, Any]:
    with db.read() as session:
        return dict(
            session.execute(
                text("SELECT status, error, failure_count FROM subscription WHERE id = :id"),
                {"id": subscription_id},
            )
            .mappings()
            .one()
        )


def all_notifications_settled(db: Database) -> bool:
    return all(row["state"] in ("done", "dead") for row in notification_rows(db))


def dispatch(
    db: Database,
    keys: SigningKeys | None,
    *,
    until: Callable[[Database], bool] = all_notifications_settled,
    settings: DispatcherSettings = FAST,
    timeout: float = 20,
) -> None:
    """Run a dispatcher that can sign until `until(db)` holds."""

    async def run() -> None:
        dispatcher = Dispatcher(db, clock=system_clock, settings=settings, seed=1, signing_keys=keys)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while not await asyncio.to_thread(until, db):
                if time.monotonic() > deadline:
                    raise AssertionError("the dispatcher did not settle in time")
                await asyncio.sleep(0.03)
        finally:
            stop.set()
            await task

    asyncio.run(run())


def business_status(task_body: bytes) -> str:
    return str(orjson.loads(task_body)["businessStatus"]["coding"][0]["code"])


# --- which subscriptions a change notifies ----------------------------------------------------


def test_a_change_queues_one_notification_per_matching_subscription_of_its_trust(
    as_tenant: AsTenant, db: Database
) -> None:
    rba, rbb = as_tenant("trust-rba"), as_tenant("trust-rbb")
    url = "https://ehr.example.nhs.uk/hook"
    matching = {
        subscribe(rba, url, "Task"),
        subscribe(rba, url, "Task?owner=VNCEL"),
        subscribe(rba, url, "Task?owner=https://fhir.nhs.uk/Id/ods-organization-code|VNCEL"),
        subscribe(rba, url, "Task?business-status=dispensed,delivered"),
        subscribe(rba, url, "Task?owner=VNCEL&business-status=dispensed"),
    }
    not_matching = {
        subscribe(rba, url, "Task?owner=VNFKT"),
        subscribe(rba, url, "Task?business-status=delivered"),
        subscribe(rba, url, "Task?owner=VNFKT&business-status=dispensed"),
        subscribe(rbb, url, "Task"),  # another trust's: never told of RBA's prescriptions
    }
    turned_off = subscribe(rba, url, "Task")
    assert rba.delete(f"/fhir/Subscription/{turned_off}").status_code == 200
    prescription = Prescription(db)

    queued, body = prescription.changes_to("dispensed")

    assert queued == len(matching)
    rows = notification_rows(db)
    assert {row["subscription_id"] for row in rows} == matching
    assert not {row["subscription_id"] for row in rows} & (not_matching | {turned_off})
    for row in rows:
        assert bytes(row["payload"]) == body, "the Task as it was at the change"
        assert row["ordering_key"] == f"sub:{row['subscription_id']}"
        assert row["kind"] == "notification" and row["state"] == "pending"


def test_a_change_nobody_subscribed_to_queues_nothing(as_tenant: AsTenant, db: Database) -> None:
    subscribe(as_tenant("trust-rbb"), "https://ehr.example.nhs.uk/hook")
    prescription = Prescription(db)
    assert prescription.changes_to("accepted")[0] == 0
    assert notification_rows(db) == []


def test_a_subscription_past_its_end_is_not_notified(as_tenant: AsTenant, db: Database) -> None:
    rba = as_tenant("trust-rba")
    end = datetime.now(UTC) + timedelta(hours=1)
    response = rba.post(
        "/fhir/Subscription",
        content=orjson.dumps(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "one hour",
                "criteria": "Task",
                "end": end.isoformat(),
                "channel": {"type": "rest-hook", "endpoint": "https://ehr.example.nhs.uk/hook"},
            }
        ),
        headers=FHIR_JSON,
    )
    assert response.status_code == 201
    prescription = Prescription(db)
    assert prescription.changes_to("accepted")[0] == 1
    assert prescription.changes_to("dispensed", now=end + timedelta(seconds=1))[0] == 0


def test_a_change_rolled_back_notifies_nobody(as_tenant: AsTenant, db: Database) -> None:
    subscribe(as_tenant("trust-rba"), "https://ehr.example.nhs.uk/hook")
    prescription = Prescription(db)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        enqueue_notifications(
            tx,
            tenant_ods="RBA",
            provider_ods="VNCEL",
            prescription_id=prescription.id,
            task=prescription.task("accepted", datetime.now(UTC)),
            business_status="accepted",
            now=datetime.now(UTC),
        )
        raise RuntimeError("the status change failed after queueing")
    assert notification_rows(db) == []


# --- delivery ----------------------------------------------------------------------------------


def test_notifications_arrive_signed_in_order_with_the_state_at_each_change(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscription_id = subscribe(as_tenant("trust-rba"), endpoint.url)
    prescription = Prescription(db)
    sent = [
        prescription.changes_to(status)[1]
        for status in ("accepted", "in-preparation", "dispensed", "delivered")
    ]

    dispatch(db, signing_keys)

    received = endpoint.receiver.delivered()
    assert [n.body for n in received] == sent, "every state, byte for byte, in the order of the changes"
    assert [business_status(n.body) for n in received] == [
        "accepted",
        "in-preparation",
        "dispensed",
        "delivered",
    ]
    assert endpoint.receiver.order_problems() == []
    for notification in received:
        assert notification.signature_valid, notification.signature_problem
        assert notification.kid == signing_keys.signing_key.kid
        assert notification.headers["content-type"] == "application/fhir+json"
        assert notification.headers["authorization"] == SECRET, "the subscriber's own header"
        assert notification.path == "/notifications"
    request_ids = [n.request_id for n in received]
    assert len(set(request_ids)) == 4 and all(uuid.UUID(str(r)) for r in request_ids)
    assert [row["state"] for row in notification_rows(db)] == ["done"] * 4
    assert subscription_row(db, subscription_id) == {"status": "active", "error": None, "failure_count": 0}


def test_an_empty_body_notification_is_signed_too(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscribe(as_tenant("trust-rba"), endpoint.url, payload=False)
    Prescription(db).changes_to("accepted")
    dispatch(db, signing_keys)
    (ping,) = endpoint.receiver.delivered()
    assert ping.body == b"" and ping.resource() is None
    assert ping.signature_valid, ping.signature_problem
    assert ping.headers["content-type"] == "application/fhir+json"


def test_the_signature_fails_when_the_body_is_altered(
    as_tenant: AsTenant,
    db: Database,
    endpoint: ReceiverServer,
    signing_keys: SigningKeys,
    server: RunningServer,
) -> None:
    subscribe(as_tenant("trust-rba"), endpoint.url)
    Prescription(db).changes_to("delivered")
    dispatch(db, signing_keys)
    (notification,) = endpoint.receiver.delivered()
    signature = str(notification.signature)
    published = KeySet.import_key_set(httpx.get(f"{server.base_url}/.well-known/jwks.json").json())
    header = verify_detached(signature, notification.body, published)
    assert header == {"alg": "ES256", "kid": signing_keys.signing_key.kid}
    altered = notification.body.replace(b'"delivered"', b'"cancelled"')
    assert altered != notification.body
    for body in (altered, notification.body + b" ", b""):
        with pytest.raises(SignatureError):
            verify_detached(signature, body, published)
    forged = sign_detached(altered, ECKey.generate_key("P-256", auto_kid=True))
    with pytest.raises(SignatureError):
        verify_detached(forged, altered, published)
    for malformed in ("", "a.b.c", signature.replace("..", ".e30."), "x..y"):
        with pytest.raises(SignatureError):
            verify_detached(malformed, notification.body, published)


def test_a_failed_notification_is_retried_and_never_overtaken(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscription_id = subscribe(as_tenant("trust-rba"), endpoint.url)
    prescription = Prescription(db)
    endpoint.receiver.configure(fail_next=2)
    for status in ("accepted", "dispensed", "delivered"):
        prescription.changes_to(status)

    dispatch(db, signing_keys)

    every = endpoint.receiver.notifications()
    assert [n.answered for n in every] == [503, 503, 200, 200, 200]
    assert [business_status(n.body) for n in every] == ["accepted"] * 3 + ["dispensed", "delivered"]
    assert len({n.request_id for n in every[:3]}) == 1, "a retry carries the same X-Request-ID"
    assert endpoint.receiver.order_problems() == []
    assert [(row["state"], row["attempts"]) for row in notification_rows(db)] == [
        ("done", 2),
        ("done", 0),
        ("done", 0),
    ]
    assert subscription_row(db, subscription_id)["failure_count"] == 0, "a delivery resets the count"


def test_a_subscriber_that_stays_down_puts_the_subscription_in_error(
    as_tenant: AsTenant, db: Database, signing_keys: SigningKeys
) -> None:
    rba = as_tenant("trust-rba")
    nobody_listens = f"http://127.0.0.1:{free_port()}/hook"
    subscription_id = subscribe(rba, nobody_listens)
    prescription = Prescription(db)
    for status in ("accepted", "dispensed"):
        prescription.changes_to(status)

    dispatch(db, signing_keys)

    first, second = notification_rows(db)
    assert (first["state"], first["attempts"]) == ("dead", 3), "three failures in a row (the setting)"
    assert first["last_error"] == UNREACHABLE
    assert (second["state"], second["attempts"]) == ("dead", 0), "never sent after a lost one"
    assert "error" in second["last_error"]
    stored = rba.get(f"/fhir/Subscription/{subscription_id}").json()
    assert stored["status"] == "error"
    assert stored["error"].startswith("3 deliveries in a row failed")
    assert subscription_row(db, subscription_id)["failure_count"] == 3
    assert prescription.changes_to("delivered")[0] == 0, "a subscription in error is not notified"


def test_an_endpoint_answering_errors_counts_as_down(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscription_id = subscribe(as_tenant("trust-rba"), endpoint.url)
    endpoint.receiver.configure(status_code=410)
    Prescription(db).changes_to("accepted")
    dispatch(db, signing_keys)
    assert [n.answered for n in endpoint.receiver.notifications()] == [410, 410, 410]
    assert subscription_row(db, subscription_id)["status"] == "error"
    assert "HTTP 410" in str(subscription_row(db, subscription_id)["error"])


def test_a_slow_endpoint_times_out_and_is_retried(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscribe(as_tenant("trust-rba"), endpoint.url)
    endpoint.receiver.configure(delay_seconds=0.6)
    Prescription(db).changes_to("accepted")
    impatient = replace(FAST, notification_timeout_seconds=0.2, subscription_error_after=10)
    dispatch(db, signing_keys, settings=impatient, until=lambda d: notification_rows(d)[0]["attempts"] >= 1)
    endpoint.receiver.configure(delay_seconds=0.0)
    dispatch(db, signing_keys, settings=impatient)
    (row,) = notification_rows(db)
    assert row["state"] == "done" and row["attempts"] >= 1


def test_a_turned_off_subscription_gets_nothing_more(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    rba = as_tenant("trust-rba")
    subscription_id = subscribe(rba, endpoint.url)
    prescription = Prescription(db)
    prescription.changes_to("accepted")
    assert rba.delete(f"/fhir/Subscription/{subscription_id}").status_code == 200
    assert prescription.changes_to("dispensed")[0] == 0
    dispatch(db, signing_keys)
    assert endpoint.receiver.notifications() == []
    (row,) = notification_rows(db)
    assert row["state"] == "dead" and "turned off" in row["last_error"]


def test_turning_one_subscription_off_leaves_the_others_notifications(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    rba = as_tenant("trust-rba")
    kept = subscribe(rba, endpoint.url)
    dropped = subscribe(rba, endpoint.url, criteria="Task?owner=VNCEL")
    assert Prescription(db).changes_to("accepted")[0] == 2
    assert rba.delete(f"/fhir/Subscription/{dropped}").status_code == 200
    dispatch(db, signing_keys)
    rows = {row["subscription_id"]: row for row in notification_rows(db)}
    assert rows[kept]["state"] == "done"
    assert rows[dropped]["state"] == "dead" and "turned off" in rows[dropped]["last_error"]
    assert len(endpoint.receiver.notifications()) == 1


def test_a_notification_being_sent_when_its_subscription_is_turned_off_is_dropped_not_sent(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    """Claimed by a worker that then died, its subscription turned off meanwhile: when the lease ends
    the next worker drops it, saying why, and never sends it."""
    rba = as_tenant("trust-rba")
    subscription_id = subscribe(rba, endpoint.url)
    Prescription(db).changes_to("accepted")
    [claimed] = outbox.claim_due(db, owner="dead-worker", now=system_clock(), lease=timedelta(0), limit=10)
    assert rba.delete(f"/fhir/Subscription/{subscription_id}").status_code == 200
    dispatch(db, signing_keys)
    (row,) = notification_rows(db)
    assert row["id"] == claimed.outbox_id
    assert row["state"] == "dead" and row["attempts"] == 0
    assert row["last_error"] == "not sent: the subscription is off"
    assert endpoint.receiver.notifications() == []


def test_notifications_never_wait_behind_a_stuck_provider_send(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscribe(as_tenant("trust-rba"), endpoint.url)
    prescription = Prescription(db)
    later = datetime.now(UTC) + timedelta(hours=1)
    with db.write_connection() as connection:
        # A cancel to the provider, claimed by a worker that is taking its time about it.
        connection.execute(
            text(
                "INSERT INTO outbox (prescription_id, kind, provider_ods, idempotency_key, ordering_key, "
                "state, attempts, due_at, lease_owner, lease_until, created_at, updated_at) VALUES (:p, "
                "'cancel', 'VNCEL', :key, :p, 'sending', 0, :now, 'elsewhere', :later, :now, :now)"
            ),
            {
                "p": prescription.id,
                "key": f"cancel-{prescription.id}",
                "now": datetime.now(UTC),
                "later": later,
            },
        )
    prescription.changes_to("cancel-requested")
    dispatch(db, signing_keys)
    (notification,) = endpoint.receiver.delivered()
    assert business_status(notification.body) == "cancel-requested"


def test_a_dispatcher_without_signing_keys_leaves_notifications_alone(
    as_tenant: AsTenant, db: Database, endpoint: ReceiverServer, signing_keys: SigningKeys
) -> None:
    subscribe(as_tenant("trust-rba"), endpoint.url)
    Prescription(db).changes_to("accepted")
    assert (
        outbox.claim_due(
            db, owner="x", now=system_clock(), lease=timedelta(seconds=5), limit=10, notifications=False
        )
        == []
    )
    dispatch(db, signing_keys)
    assert len(endpoint.receiver.delivered()) == 1


def test_the_subscribers_header_is_sent_but_never_logged(
    as_tenant: AsTenant,
    db: Database,
    endpoint: ReceiverServer,
    signing_keys: SigningKeys,
    restore_logging: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging(level="INFO", json=True)  # as `serve` does, writing into capfd's capture
    subscribe(as_tenant("trust-rba"), endpoint.url)
    prescription = Prescription(db)
    endpoint.receiver.configure(fail_next=1)
    prescription.changes_to("accepted")
    dispatch(db, signing_keys)
    assert endpoint.receiver.delivered()[0].headers["authorization"] == SECRET
    logged = capfd.readouterr()
    assert "notification_delivered" in logged.out + logged.err
    assert "subscriber-secret" not in logged.out + logged.err
    assert endpoint.url not in logged.out + logged.err


def test_metrics_count_notifications(
    as_tenant: AsTenant,
    db: Database,
    endpoint: ReceiverServer,
    signing_keys: SigningKeys,
) -> None:
    subscribe(as_tenant("trust-rba"), endpoint.url)
    endpoint.receiver.configure(fail_next=1)
    Prescription(db).changes_to("accepted")
    dispatch(db, signing_keys)
    with RunningServer(admin_app(db, system_clock)) as admin:
        metrics = httpx.get(f"{admin.base_url}/metrics").text
    assert 'homecare_notifications_total{outcome="delivered"}' in metrics
    assert 'homecare_notifications_total{outcome="retry"}' in metrics


def test_an_attached_jws_is_not_a_detached_signature(
    server: RunningServer, signing_keys: SigningKeys
) -> None:
    """A compact JWS that carries its own payload is refused even when it signs these very bytes:
    the signature must be over the body as received, never over a payload the header brings."""
    body = b'{"resourceType":"Bundle","type":"history"}'
    key = signing_keys.signing_key
    published = KeySet.import_key_set(signing_keys.jwks())
    attached = jws.serialize_compact({"alg": "ES256", "kid": key.kid}, body, key, algorithms=["ES256"])
    other = jws.serialize_compact({"alg": "ES256", "kid": key.kid}, b"{}", key, algorithms=["ES256"])
    for signature in (attached, other):
        with pytest.raises(SignatureError, match="detached"):
            verify_detached(signature, body, published)
    assert verify_detached(sign_detached(body, key), body, published)["kid"] == key.kid
