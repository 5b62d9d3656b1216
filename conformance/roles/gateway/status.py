"""DISPATCH and STATUS: the order reaches the provider's system (played by the suite) unchanged, and
the status the provider reports comes back in the order it happened, stale reports kept out,
illegal transitions refused."""

from __future__ import annotations

from datetime import timedelta

from conformance.checks import expect, expect_refusal, expect_status, json_body
from conformance.messages import HOMECARE_STATUS_SYSTEM, ODS_SYSTEM, PRESCRIPTION_ID_SYSTEM, Message
from conformance.model import Evidence, Requirement, Role, conformance_test
from conformance.roles.gateway.context import GatewayRun, business_status, now_minus, task_item

ROLE = Role.GATEWAY
STATUS = "DESIGN.md §4, §10 Status"


def _lifecycle_order(run: GatewayRun, key: str) -> Message:
    order, _ = run.accepted_order(key)
    run.wait_for_sent(order)
    return order


@conformance_test(
    "DISPATCH-01",
    "The order reaches the provider's FHIR endpoint byte for byte, with an Idempotency-Key",
    Requirement(
        "DESIGN.md §10 Status (Forwarding)",
        "fhir-rest sends the trust's bytes unchanged; Idempotency-Key in a header",
    ),
    role=ROLE,
)
def forwarded_unchanged(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "dispatch")
    deliveries = [
        d for d in run.require_provider_system().of(order.short_form_id) if d.event == "prescription-order"
    ]
    first = deliveries[0]
    expect(
        first.body == order.body(),
        "the provider received other bytes than the trust sent (the signature would break)",
    )
    expect(first.headers.get("idempotency-key", "") != "", "the delivery carries no Idempotency-Key header")
    expect("fhir+json" in first.headers.get("content-type", ""), "the delivery is not application/fhir+json")
    keys = {d.headers.get("idempotency-key") for d in deliveries}
    expect(len(keys) == 1, f"repeated deliveries of one order carry {len(keys)} different Idempotency-Keys")


@conformance_test(
    "STATUS-01",
    "An accepted order shows one Task per item: basedOn, owner, requester, businessStatus 'sent' once delivered",
    Requirement(STATUS, "Task per line item; received → queued → sent; a provider's 2xx means sent"),
    role=ROLE,
)
def task_after_delivery(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "dispatch")
    task = run.tasks("trust_a", order)[0]
    based_on = [b.get("identifier", {}) for b in task.get("basedOn", [])]
    expect(
        {"system": PRESCRIPTION_ID_SYSTEM, "value": order.short_form_id}
        in [{"system": b.get("system"), "value": b.get("value")} for b in based_on],
        "Task.basedOn does not name the short-form prescription ID",
    )
    expect(
        task.get("owner", {}).get("identifier") == {"system": ODS_SYSTEM, "value": order.performer_ods},
        "Task.owner is not the provider's ODS code",
    )
    expect(
        task.get("requester", {}).get("identifier", {}).get("value") == order.sender_ods,
        "Task.requester is not the sending trust's ODS code",
    )
    coding = task.get("businessStatus", {}).get("coding", [{}])[0]
    expect(
        coding.get("system") == HOMECARE_STATUS_SYSTEM and coding.get("code") == "sent",
        f"businessStatus is {coding}, expected {HOMECARE_STATUS_SYSTEM}|sent",
    )
    expect(isinstance(task.get("lastModified"), str), "Task.lastModified is missing")


@conformance_test(
    "STATUS-02",
    "A provider's report is applied: sent → accepted → in-preparation",
    Requirement(STATUS, "providers report per line item with PSU-style Tasks"),
    role=ROLE,
)
def reports_applied(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "lifecycle")
    base = now_minus(60)
    for step, status in enumerate(("accepted", "in-preparation")):
        expect_status(run.report(order, 0, status, base + timedelta(seconds=step)), 200, 201)
        seen = run.item_status("trust_a", order)
        expect(seen == status, f"after reporting {status!r} the trust sees {seen!r}")


@conformance_test(
    "STATUS-03",
    "A stale report (older lastModified from the same provider) is kept out: the status stays",
    Requirement(STATUS, "an update older than the newest applied from the same source changes nothing"),
    role=ROLE,
)
def stale_report(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "stale")
    base = now_minus(60)
    expect_status(run.report(order, 0, "accepted", base), 200, 201)
    expect_status(run.report(order, 0, "in-preparation", base + timedelta(seconds=10)), 200, 201)
    evidence.note("now a 'query' that happened before 'in-preparation' arrives late")
    late = run.report(order, 0, "query", base + timedelta(seconds=5), note="Late question")
    expect(late.status_code < 500, f"a stale report answered HTTP {late.status_code}")
    seen = run.item_status("trust_a", order)
    expect(seen == "in-preparation", f"a stale report changed the status to {seen!r}")


@conformance_test(
    "STATUS-04",
    "An illegal transition is refused: 409 naming the current and requested status",
    Requirement(
        STATUS, "anything the transition table does not allow is refused, 409 with both statuses named"
    ),
    role=ROLE,
)
def illegal_transition(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "illegal")
    base = now_minus(60)
    expect_status(run.report(order, 0, "accepted", base), 200, 201)
    response = run.report(order, 0, "delivered", base + timedelta(seconds=1))
    issue = expect_refusal(response, 409, {"business-rule", "conflict", "processing", "invalid"})
    text = f"{issue.get('diagnostics', '')} {issue.get('details', {}).get('text', '')}"
    expect(
        "accepted" in text and "delivered" in text,
        f"the refusal does not name both statuses: {text.strip()!r}",
    )
    expect(run.item_status("trust_a", order) == "accepted", "the refused transition changed the status")


@conformance_test(
    "STATUS-05",
    "The lifecycle runs to delivered, and the item's history lists every step in order",
    Requirement(STATUS, "every change is an event; the timeline of any prescription can be shown"),
    role=ROLE,
)
def lifecycle_to_delivered(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "delivered")
    steps = ("accepted", "in-preparation", "dispensed", "delivery-scheduled", "out-for-delivery", "delivered")
    base = now_minus(120)
    for n, status in enumerate(steps):
        expect_status(run.report(order, 0, status, base + timedelta(seconds=n)), 200, 201)
    task = next(t for t in run.tasks("trust_a", order) if task_item(t) == order.item_ids[0])
    expect(business_status(task) == "delivered", f"the item ended {business_status(task)!r}")
    history = run.http.get(f"/fhir/Task/{task['id']}/_history", headers=run.auth("trust_a"))
    expect_status(history, 200)
    seen = [business_status(e.get("resource", {})) for e in json_body(history).get("entry", [])]
    positions = [seen.index(s) if s in seen else -1 for s in steps]
    ordered = positions == sorted(positions) or positions == sorted(positions, reverse=True)
    expect(-1 not in positions and ordered, f"the history does not list every step in order: {seen}")


@conformance_test(
    "STATUS-06",
    "A provider cannot report for an order routed elsewhere, or as another owner",
    Requirement("DESIGN.md §6", "a provider sees and updates only what was routed to it"),
    role=ROLE,
)
def other_provider_reports(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "dispatch")
    run.client("provider_b")
    as_owner = run.report(order, 0, "accepted", now_minus(30), name="provider_b")
    expect(
        as_owner.status_code in (403, 404),
        f"provider B reporting as provider A answered HTTP {as_owner.status_code}",
    )
    own_name = run.report(
        order, 0, "accepted", now_minus(30), name="provider_b", owner_ods=run.client("provider_b").ods
    )
    expect(
        own_name.status_code in (403, 404),
        f"provider B reporting on A's order answered HTTP {own_name.status_code}",
    )
    expect(run.item_status("trust_a", order) == "sent", "another provider's report changed the status")


@conformance_test(
    "STATUS-07",
    "A trust cannot report status (no Task.cu): 403",
    Requirement("DESIGN.md §10 Security", "provider status updates need system/Task.cu"),
    role=ROLE,
)
def trust_cannot_report(run: GatewayRun, evidence: Evidence) -> None:
    order = _lifecycle_order(run, "dispatch")
    response = run.report(order, 0, "accepted", now_minus(30), name="trust_a")
    expect_refusal(response, 403, "forbidden")
