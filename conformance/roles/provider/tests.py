"""PROV: what a provider's system does with the gateway's orders: acknowledgements, idempotency,
refusals with an OperationOutcome, cancellations, and the status Tasks it reports back."""

from __future__ import annotations

import json
from datetime import datetime

from conformance.checks import expect, outcome_shape_problems
from conformance.messages import HOMECARE_STATUS_SYSTEM, ITEM_SYSTEM, ODS_SYSTEM, PRESCRIPTION_ID_SYSTEM
from conformance.model import Evidence, Failed, Requirement, Role, Skipped, conformance_test
from conformance.roles.provider.session import ProviderSession, Sent, StatusReport

ROLE = Role.PROVIDER
ADAPTER = "DESIGN.md §5, §10 Status (Forwarding)"
TRANSPORT_ANSWERS = (
    "README Delivery to providers: fhir-rest 2xx/4xx; hl7v2-mllp ACK AA / AE, AR (ERR-8 or MSA-3 the reason); "
    "csv-drop the file picked up, a refusal as a `rejected` status"
)
STATUS = "DESIGN.md §4, §5, §10 Status"
TASK_STATUSES = {
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
}
# The transition table of DESIGN.md §10, as far as a provider's reports go (the suite's own copy).
NEXT = {
    "sent": {"accepted", "rejected", "query", "cancelled"},
    "accepted": {"in-preparation", "dispensed", "query", "rejected", "cancelled"},
    "in-preparation": {"dispensed", "query", "cancelled"},
    "query": {"accepted", "in-preparation", "rejected", "cancelled"},
    "dispensed": {"delivery-scheduled", "out-for-delivery", "delivered"},
    "delivery-scheduled": {"out-for-delivery", "delivered", "delivery-failed"},
    "out-for-delivery": {"delivered", "delivery-failed"},
    "delivery-failed": {"delivery-scheduled", "out-for-delivery"},
}


def _sent(session: ProviderSession, name: str, evidence: Evidence) -> Sent:
    sent = session.exercise_log.sent.get(name)
    if sent is None:
        raise Skipped(f"the suite did not send its '{name}' message")
    if sent.exchange is not None:
        evidence.exchanges.append(sent.exchange)
    return sent


def _reports(session: ProviderSession, evidence: Evidence, items: list[str]) -> list[StatusReport]:
    reports = [r for r in session.exercise_log.reports if r.item in items]
    wanted = set(items)
    evidence.exchanges.extend(
        e for e in session.exercise_log.exchanges if any(i in e.request_body for i in wanted)
    )
    return reports


def _expect_refusal_with_outcome(session: ProviderSession, sent: Sent, what: str, evidence: Evidence) -> None:
    ack = sent.acknowledgement
    transport = session.transport
    if not transport.refusals_answered:
        # A file drop has no answer: the provider picks the file up and must not take the order; a
        # refusal it reports is a `rejected` status with its reason (README csv-drop). Pull: the
        # provider must not take an order offered to another owner; it refuses by a `rejected` Task.
        evidence.note(f"{what}: {ack.code}")
        if transport.scheme == "csv-drop":
            expect(ack.accepted, f"{what}: {ack.code}; the provider did not pick the file up")
        for report in _reports(session, evidence, sent.message.item_ids):
            expect(
                report.status == "rejected",
                f"{what}: the provider took it (reported {report.status!r}); expected no order taken",
            )
            expect("statusReason" in report.task, f"{what}: rejected without a reason")
        return
    if ack.status is None:
        expect(
            ack.permanent_refusal,
            f"{what}: answered {ack.code}; expected a permanent refusal (AE, or AR other than 206/207)",
        )
        expect(bool(ack.reason), f"{what}: the refusal names no reason (ERR-8 or MSA-3)")
        return
    expect(
        ack.permanent_refusal,
        f"{what}: answered {ack.code}; expected a permanent refusal (4xx, not 401/403/408/429)",
    )
    try:
        document = json.loads(ack.body)
    except ValueError as exc:
        raise Failed(f"{what}: the refusal carries no JSON OperationOutcome") from exc
    problems = outcome_shape_problems(document)
    expect(problems == [], f"{what}: " + "; ".join(problems))


@conformance_test(
    "PROV-ACK-01",
    "A valid order is acknowledged (2xx; ACK AA; the order file picked up)",
    Requirement(
        f"{ADAPTER}; {TRANSPORT_ANSWERS}",
        "a provider's acknowledgement means the order was taken (sent); acceptance comes as a status update",
    ),
    role=ROLE,
)
def acknowledged(session: ProviderSession, evidence: Evidence) -> None:
    sent = _sent(session, "order", evidence)
    expect(sent.acknowledgement.accepted, f"a valid order answered {sent.acknowledgement.code}")


@conformance_test(
    "PROV-IDEM-01",
    "The same order again under its key (Idempotency-Key, MSH-10, file name) gets the same answer "
    "and starts nothing new",
    Requirement(
        f"{ADAPTER}; README hl7v2-mllp (MSH-10 the same for every resend), csv-drop (takes each order key once)",
        "a provider may see a message twice; the key lets it take the order once",
    ),
    role=ROLE,
)
def idempotent(session: ProviderSession, evidence: Evidence) -> None:
    first, repeat = _sent(session, "order", evidence), _sent(session, "repeat", evidence)
    expect(
        repeat.acknowledgement.accepted == first.acknowledgement.accepted
        and repeat.acknowledgement.status == first.acknowledgement.status,
        f"the repeat answered {repeat.acknowledgement.code}, the first {first.acknowledgement.code}",
    )
    reports = _reports(session, evidence, first.message.item_ids)
    statuses = [r.status for r in reports]
    firsts = [s for s in statuses if s in ("accepted", "rejected")]
    expect(len(firsts) <= 1, f"the order was taken twice: reports {statuses}")


@conformance_test(
    "PROV-IDEM-02",
    "Other bytes under a used Idempotency-Key are refused (409)",
    Requirement("README fhir-rest", "the same key with other bytes is a conflict"),
    role=ROLE,
    optional=True,
)
def key_conflict(session: ProviderSession, evidence: Evidence) -> None:
    if session.transport.scheme != "fhir-rest":
        raise Skipped(
            f"{session.transport.scheme} has no conflict answer: a repeated key is taken once (PROV-IDEM-01)"
        )
    sent = _sent(session, "same-key-other-bytes", evidence)
    expect(sent.acknowledgement.status == 409, f"answered {sent.acknowledgement.code}, not 409")


@conformance_test(
    "PROV-REJ-01",
    "An order for another provider is refused permanently, with its reason",
    Requirement(
        f"{ADAPTER}; {TRANSPORT_ANSWERS}",
        "a permanent refusal with its reason (4xx other than 401/403/408/429 with an OperationOutcome; "
        "AE/AR; a file: not taken)",
    ),
    role=ROLE,
)
def other_provider(session: ProviderSession, evidence: Evidence) -> None:
    _expect_refusal_with_outcome(
        session, _sent(session, "other-provider", evidence), "an order for provider ZZ9ZZ", evidence
    )


@conformance_test(
    "PROV-REJ-02",
    "An invalid order is refused permanently, with its reason",
    Requirement(
        f"EPS / {ADAPTER}; {TRANSPORT_ANSWERS}",
        "an invalid message (fhir-rest: a wrong prescription ID check character; hl7v2-mllp: no ORC-4; "
        "csv-drop: no short_form_id column) is refused with its reason, not taken or retried",
    ),
    role=ROLE,
)
def invalid_order(session: ProviderSession, evidence: Evidence) -> None:
    if not session.transport.invalid_order:
        raise Skipped(f"{session.transport.scheme}: the gateway offers only orders it validated")
    _expect_refusal_with_outcome(
        session, _sent(session, "invalid", evidence), session.transport.invalid_order, evidence
    )


@conformance_test(
    "PROV-STATUS-01",
    "Status reports are PSU-style Tasks: basedOn the prescription ID, focus the item, "
    "owner the provider, a known businessStatus",
    Requirement(
        STATUS,
        "providers send status with Task resources (basedOn, focus, businessStatus, lastModified, owner)",
    ),
    role=ROLE,
)
def well_formed_reports(session: ProviderSession, evidence: Evidence) -> None:
    order = _sent(session, "order", evidence).message
    reports = _reports(session, evidence, order.item_ids)
    expect(reports != [], f"no status report arrived at {session.status_url} for the order")
    for report in reports:
        task = report.task
        expect(report.problem is None, f"a status report could not be read: {report.problem}")
        expect(report.authorised, "a status report came without the configured bearer token")
        expect(
            task.get("status") in TASK_STATUSES,
            f"Task.status {task.get('status')!r} is not a FHIR TaskStatus",
        )
        based_on = [b.get("identifier", {}) for b in task.get("basedOn", [])]
        expect(
            {"system": PRESCRIPTION_ID_SYSTEM, "value": order.short_form_id}
            in [{"system": b.get("system"), "value": b.get("value")} for b in based_on],
            "Task.basedOn does not name the prescription ID",
        )
        expect(
            task.get("focus", {}).get("identifier", {}).get("system") == ITEM_SYSTEM,
            "Task.focus does not name the item",
        )
        owner = task.get("owner", {}).get("identifier", {})
        expect(
            owner.get("system") == ODS_SYSTEM and owner.get("value") == session.config.ods,
            f"Task.owner is {owner}, not the provider's ODS code",
        )
        coding = (task.get("businessStatus", {}).get("coding") or [{}])[0]
        expect(
            coding.get("system") == HOMECARE_STATUS_SYSTEM
            and (coding.get("code") in NEXT or coding.get("code") in {"rejected", "cancelled", "delivered"}),
            f"businessStatus {coding} is not a homecare status",
        )
        expect(isinstance(task.get("lastModified"), str), "Task.lastModified is missing")


@conformance_test(
    "PROV-STATUS-02",
    "Each item's reports follow the transition table, with lastModified increasing",
    Requirement(
        f"{STATUS}; README hl7v2-mllp (ORC-9 in whole seconds: reports of one second keep their order)",
        "transitions the state machine allows; updates carry the time they happened",
    ),
    role=ROLE,
)
def legal_sequence(session: ProviderSession, evidence: Evidence) -> None:
    order = _sent(session, "order", evidence).message
    same_second = session.transport.same_second_reports
    for item in order.item_ids:
        reports = sorted(_reports(session, evidence, [item]), key=lambda r: str(r.task.get("lastModified")))
        expect(reports != [], "no status report for the order's item")
        status, last = "sent", None
        for report in reports:
            when = datetime.fromisoformat(str(report.task.get("lastModified")).replace("Z", "+00:00"))
            expect(
                last is None or when > last or (same_second and when == last),
                "two reports of one item have the same lastModified"
                if last is not None and when == last
                else "an item's lastModified went backwards",
            )
            if report.status != status:
                expect(
                    report.status in NEXT.get(status, set()),
                    f"{status} → {report.status} is not an allowed transition",
                )
            status, last = str(report.status), when


@conformance_test(
    "PROV-STATUS-03",
    "The order's lifecycle reaches a final status (delivered or rejected) within the wait",
    Requirement(STATUS, "the provider reports each step to delivered"),
    role=ROLE,
    optional=True,
)
def lifecycle_finishes(session: ProviderSession, evidence: Evidence) -> None:
    order = _sent(session, "order", evidence).message
    statuses = [r.status for r in _reports(session, evidence, order.item_ids)]
    expect(
        bool({"delivered", "rejected"} & set(statuses)),
        f"no final status within {session.config.wait_seconds:.0f} s: {statuses}",
    )


@conformance_test(
    "PROV-CANCEL-01",
    "A cancellation before dispensing is acknowledged, and every item is reported cancelled",
    Requirement(
        f"{STATUS}; {TRANSPORT_ANSWERS}",
        "cancel-requested → cancelled on the provider's agreement (the cancel acknowledged, then `cancelled`)",
    ),
    role=ROLE,
)
def cancellation(session: ProviderSession, evidence: Evidence) -> None:
    order = _sent(session, "to-cancel", evidence)
    cancel = _sent(session, "cancellation", evidence)
    expect(order.acknowledgement.accepted, f"the order to cancel answered {order.acknowledgement.code}")
    expect(cancel.acknowledgement.accepted, f"the cancellation answered {cancel.acknowledgement.code}")
    for item in order.message.item_ids:
        statuses = [r.status for r in _reports(session, evidence, [item])]
        expect("cancelled" in statuses, f"item {item} was never reported cancelled: {statuses}")
        after = statuses[statuses.index("cancelled") + 1 :]
        expect(after == [], f"item {item} moved on after it was cancelled: {after}")


@conformance_test(
    "PROV-CANCEL-02",
    "A cancellation of a prescription the provider never had is refused permanently",
    Requirement(STATUS, "the provider's refusal decides (4xx with its reason)"),
    role=ROLE,
    optional=True,
)
def unknown_cancellation(session: ProviderSession, evidence: Evidence) -> None:
    if not session.transport.refusals_answered:
        raise Skipped(
            f"{session.transport.scheme}: a file drop has no answer to a cancellation and a status file names "
            "only prescriptions the provider has; a pulling provider is never offered one: nothing to check"
        )
    _expect_refusal_with_outcome(
        session,
        _sent(session, "unknown-cancellation", evidence),
        "a cancellation of an unknown prescription",
        evidence,
    )
