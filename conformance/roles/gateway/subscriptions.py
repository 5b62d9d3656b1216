"""SUB: rest-hook subscriptions. The suite runs a trust's endpoint on loopback (plain HTTP, which a
gateway allows only in development), then checks each notification's detached JWS against the
gateway's published keys, and that notifications come in the order the changes happened."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from conformance.checks import expect, expect_refusal, expect_status, json_body
from conformance.model import Evidence, Requirement, Role, Skipped, conformance_test
from conformance.roles.gateway.context import (
    FHIR_JSON,
    GatewayRun,
    business_status,
    now_minus,
    verify_detached,
)

ROLE = Role.GATEWAY
SUBS = "DESIGN.md §4 (Subscriptions), README Subscriptions"


def _subscription(endpoint: str, criteria: str = "Task") -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Conformance suite",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "header": ["Authorization: Bearer conformance-subscriber-secret"],
        },
    }


def _subscribe(run: GatewayRun, name: str, path: str) -> tuple[str, dict[str, Any]]:
    endpoint = f"{run.subscriber.endpoint.url}{path}"
    response = run.http.post(
        "/fhir/Subscription",
        content=json.dumps(_subscription(endpoint)).encode(),
        headers={**FHIR_JSON, **run.auth(name)},
    )
    if response.status_code == 400 and "channel.endpoint" in response.text:
        raise Skipped(
            "the gateway refuses a loopback http:// endpoint (allowed only in development): "
            "run the suite against a development gateway for SUB tests"
        )
    expect_status(response, 201)
    return response.headers.get("location", ""), json_body(response)


@conformance_test(
    "SUB-01",
    "A trust subscribes with a rest-hook Subscription: 201, a Location, status active",
    Requirement(SUBS, "POST /fhir/Subscription answers 201 with the stored Subscription, active"),
    role=ROLE,
)
def subscribe(run: GatewayRun, evidence: Evidence) -> None:
    location, stored = _subscribe(run, "trust_a", "/sub-01")
    expect(location != "", "no Location for the new Subscription")
    expect(stored.get("status") == "active", f"the new Subscription is {stored.get('status')!r}, not active")
    read = run.http.get(location, headers=run.auth("trust_a"))
    expect_status(read, 200)
    expect(
        "conformance-subscriber-secret" not in read.text, "the channel's Authorization header is shown back"
    )


@conformance_test(
    "SUB-02",
    "A status change is notified, signed: X-Signature verifies against the gateway's JWKS over the exact body",
    Requirement(
        SUBS,
        "notifications carry a detached JWS (RFC 7515 appendix F), ES256, keys at /.well-known/jwks.json",
    ),
    role=ROLE,
)
def signed_notification(run: GatewayRun, evidence: Evidence) -> None:
    _subscribe(run, "trust_a", "/sub-02")
    order, _ = run.accepted_order("notified")
    run.wait_for_sent(order)
    expect_status(run.report(order, 0, "accepted", now_minus(30)), 200, 201)
    run.wait_for(
        "a notification of 'accepted'",
        lambda: any(
            b'"accepted"' in n.body and order.item_ids[0].encode() in n.body
            for n in run.subscriber.snapshot("/sub-02")
        ),
    )
    keys = run.gateway_keys()
    notes = [n for n in run.subscriber.snapshot("/sub-02") if order.item_ids[0].encode() in n.body]
    for note in notes:
        signature = note.headers.get("x-signature")
        expect(signature is not None, "a notification has no X-Signature header")
        problem = verify_detached(str(signature), note.body, keys)
        expect(problem is None, str(problem))
        forged = verify_detached(str(signature), note.body + b" ", keys)
        expect(forged is not None, "the suite's own check accepted a changed body: cannot judge signatures")
    task = json.loads(notes[-1].body)
    expect(task.get("resourceType") == "Task", "the notification body is not the Task")
    expect(
        notes[-1].headers.get("authorization") == "Bearer conformance-subscriber-secret",
        "the notification does not carry the channel's header",
    )


@conformance_test(
    "SUB-03",
    "Notifications arrive in the order the changes happened",
    Requirement(SUBS, "a subscription's notifications are sent one at a time, in order"),
    role=ROLE,
)
def ordered_notifications(run: GatewayRun, evidence: Evidence) -> None:
    _subscribe(run, "trust_a", "/sub-03")
    order, _ = run.accepted_order("ordered")
    run.wait_for_sent(order)
    steps = ["accepted", "in-preparation", "dispensed", "delivery-scheduled", "out-for-delivery", "delivered"]
    base = now_minus(60)
    for n, status in enumerate(steps):
        expect_status(run.report(order, 0, status, base + timedelta(seconds=n)), 200, 201)
    item = order.item_ids[0].encode()

    def statuses() -> list[str | None]:
        seen: list[str | None] = []
        for note in run.subscriber.snapshot("/sub-03"):
            if item in note.body:
                status = business_status(json.loads(note.body))
                if not seen or seen[-1] != status:
                    seen.append(status)
        return seen

    run.wait_for("a notification of 'delivered'", lambda: "delivered" in statuses())
    tail = [s for s in statuses() if s in steps]
    expect(tail == steps, f"notifications came in the order {tail}, not {steps}")


@conformance_test(
    "SUB-04",
    "A provider cannot subscribe: 403",
    Requirement(SUBS, "only a trust's systems may subscribe"),
    role=ROLE,
)
def provider_cannot_subscribe(run: GatewayRun, evidence: Evidence) -> None:
    body = json.dumps(_subscription(f"{run.subscriber.endpoint.url}/sub-04")).encode()
    response = run.http.post(
        "/fhir/Subscription", content=body, headers={**FHIR_JSON, **run.auth("provider")}
    )
    expect_refusal(response, 403, "forbidden")


@conformance_test(
    "SUB-05",
    "A Subscription the gateway cannot honour is refused (400) naming Subscription.criteria",
    Requirement(SUBS, "every problem at once, each with the FHIRPath of its element"),
    role=ROLE,
)
def bad_criteria(run: GatewayRun, evidence: Evidence) -> None:
    body = json.dumps(_subscription(f"{run.subscriber.endpoint.url}/sub-05", "Patient?name=x")).encode()
    response = run.http.post("/fhir/Subscription", content=body, headers={**FHIR_JSON, **run.auth("trust_a")})
    expect_refusal(
        response, 400, {"value", "invalid", "not-supported", "business-rule"}, "Subscription.criteria"
    )


@conformance_test(
    "TENANCY-05",
    "Another trust cannot read a trust's Subscription, and hears nothing of its prescriptions",
    Requirement(SUBS, "another trust's subscription answers exactly as a missing one (404)"),
    role=ROLE,
)
def other_trust_subscription(run: GatewayRun, evidence: Evidence) -> None:
    location, _ = _subscribe(run, "trust_a", "/tenancy-05-a")
    expect_refusal(run.http.get(location, headers=run.auth("trust_b")), 404, "not-found")
    _subscribe(run, "trust_b", "/tenancy-05-b")
    order, _ = run.accepted_order("tenancy-05")
    run.wait_for_sent(order)
    expect_status(run.report(order, 0, "accepted", now_minus(30)), 200, 201)
    item = order.item_ids[0].encode()
    run.wait_for(
        "trust A's notification",
        lambda: any(item in n.body for n in run.subscriber.snapshot("/tenancy-05-a")),
    )
    time.sleep(1.0)  # B's notification, were there one, is queued in the same transaction as A's
    leaked = [n for n in run.subscriber.snapshot("/tenancy-05-b") if item in n.body]
    expect(leaked == [], "trust B's subscription was told of trust A's prescription")
