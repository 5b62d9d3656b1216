"""CANCEL: a trust's cancellation, before and after the provider has the order, agreed or refused
by the provider, too late, or for nothing the trust has."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx

from conformance.checks import expect, expect_refusal, expect_status
from conformance.messages import Message
from conformance.model import Evidence, Failed, Requirement, Role, conformance_test
from conformance.roles.gateway.context import GatewayRun, business_status, now_minus

ROLE = Role.GATEWAY
CANCEL = "DESIGN.md §10 Status, README Cancelling"


def _statuses(run: GatewayRun, order: Message) -> set[str | None]:
    return {business_status(t) for t in run.tasks("trust_a", order)}


# A cancel can meet a send in flight (the gateway retrying the held order at that moment): the
# gateway then rightly answers 202 and sends the cancel after the order. That is a race, so the
# test tries again with a new order; a gateway that answers 202 every time never cancels an
# undelivered order itself.
_UNSENT_ATTEMPTS = 3


def _cancel_held_order(run: GatewayRun, attempt: int) -> tuple[Message, httpx.Response]:
    provider = run.require_provider_system()
    order, _ = run.accepted_order(f"held-{attempt}", hold=True)
    run.wait_for("the gateway to try the held order", lambda: provider.of(order.short_form_id) != [])
    return order, run.send("trust_a", run.builder().cancellation(order))


@conformance_test(
    "CANCEL-01",
    "Cancelling an order the provider never received cancels it at once: 200, and the order is withdrawn",
    Requirement(CANCEL, "a cancel of an order the provider never received is cancelled at once"),
    role=ROLE,
)
def before_delivery(run: GatewayRun, evidence: Evidence) -> None:
    provider = run.require_provider_system()
    for attempt in range(1, _UNSENT_ATTEMPTS + 1):
        order, response = _cancel_held_order(run, attempt)
        if response.status_code != 202:
            break
        evidence.note(f"attempt {attempt}: answered 202 (the cancel met a send in flight); a new order")
        provider.hold.discard(order.short_form_id)
    else:
        raise Failed(
            f"{_UNSENT_ATTEMPTS} orders the provider never received were each answered 202 (asked of the "
            "provider) instead of being cancelled at once"
        )
    expect_status(response, 200)
    expect(_statuses(run, order) == {"cancelled"}, f"the items are {_statuses(run, order)}, not cancelled")
    provider.hold.discard(order.short_form_id)
    time.sleep(0.5)  # long enough for a dispatcher that wrongly kept the order to send it again
    taken = [d for d in provider.of(order.short_form_id) if d.answered == 200]
    expect(taken == [], "the gateway delivered an order after it was cancelled")


@conformance_test(
    "CANCEL-02",
    "Cancelling after delivery sends the cancellation to the provider after its order; agreed, the items are cancelled",
    Requirement(
        CANCEL, "cancel-requested → cancelled on the provider's agreement; a cancel never overtakes its order"
    ),
    role=ROLE,
)
def provider_agrees(run: GatewayRun, evidence: Evidence) -> None:
    provider = run.require_provider_system()
    order, _ = run.accepted_order("cancel-agreed", items=2)
    run.wait_for_sent(order)
    response = run.send("trust_a", run.builder().cancellation(order))
    expect_status(response, 200, 202)
    run.wait_for("both items to be cancelled", lambda: _statuses(run, order) == {"cancelled"})
    events = [d.event for d in provider.of(order.short_form_id)]
    expect("prescription-order-update" in events, "the provider never received the cancellation")
    expect(
        events.index("prescription-order") < events.index("prescription-order-update"),
        "the cancellation reached the provider before its order",
    )


@conformance_test(
    "CANCEL-03",
    "A cancellation the provider refuses is refused to the trust (409) and the items go back",
    Requirement(
        CANCEL, "the provider's answer decides: cancelled, or back where they were (409 with its reason)"
    ),
    role=ROLE,
)
def provider_refuses(run: GatewayRun, evidence: Evidence) -> None:
    provider = run.require_provider_system()
    order, _ = run.accepted_order("cancel-refused")
    run.wait_for_sent(order)
    provider.refuse_cancel.add(order.short_form_id)
    response = run.send("trust_a", run.builder().cancellation(order))
    if response.status_code == 202:
        evidence.note("answered 202: waiting for the outcome in the Task")
    else:
        expect_refusal(response, 409, {"business-rule", "conflict", "processing"})
    run.wait_for("the item to go back to 'sent'", lambda: _statuses(run, order) == {"sent"})


@conformance_test(
    "CANCEL-04",
    "Cancelling a dispensed item is refused at once: 409",
    Requirement(CANCEL, "from dispensed on it is too late: 409, naming the item and its status"),
    role=ROLE,
)
def too_late(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("too-late")
    run.wait_for_sent(order)
    base = now_minus(60)
    for n, status in enumerate(("accepted", "dispensed")):
        expect_status(run.report(order, 0, status, base + timedelta(seconds=n)), 200, 201)
    expect_refusal(
        run.send("trust_a", run.builder().cancellation(order)),
        409,
        {"business-rule", "conflict", "processing"},
    )
    expect(_statuses(run, order) == {"dispensed"}, "a refused cancellation changed the status")


@conformance_test(
    "CANCEL-05",
    "Cancelling a prescription the trust never sent is refused: 404",
    Requirement(CANCEL, "404 for a cancellation of a prescription the caller does not have"),
    role=ROLE,
)
def unknown_prescription(run: GatewayRun, evidence: Evidence) -> None:
    never_sent = run.new_order()
    expect_refusal(run.send("trust_a", run.builder().cancellation(never_sent)), 404, "not-found")
