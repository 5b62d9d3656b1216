"""`$process-message` over real HTTP, on SQLite and PostgreSQL, and the rows an accepted order becomes."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller, Role
from fhir_profiles.builder import PrescriptionMessageBuilder, break_message, build_cancellation
from fhir_profiles.homecare import validate_message
from fhir_profiles.medication import medicine_name
from fhir_profiles.outcome import success_outcome
from gateway.clock import system_clock
from gateway.domain import orders
from gateway.domain.context import Context
from gateway.domain.intake import receive_message_blocking
from gateway.domain.messages import IntakeAnswer, Received
from gateway.store import messages as messages_store
from gateway.store import outbox
from gateway.store import prescriptions as store
from gateway.store.db import Database
from gateway.store.events import NewEvent
from gateway.store.providers import ProviderDirectory, add_provider
from tests.e2e_support import rows, scalar
from tests.test_homecare_profile import dispense_notification

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def post(client: httpx.Client, message: Any, **headers: str) -> httpx.Response:
    body = message if isinstance(message, bytes) else orjson.dumps(message)
    return client.post("/fhir/$process-message", content=body, headers={**FHIR_JSON, **headers})


def issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return list(body["issue"])


def the_issue(response: httpx.Response) -> tuple[str, str, str, list[str]]:
    """The answer's one issue: its code, its Spine error code, its words and where."""
    (issue,) = issues(response)
    return (issue["code"], issue["details"]["coding"][0]["code"], issue["diagnostics"], issue["expression"])


def codes(response: httpx.Response) -> list[str]:
    return [issue["details"]["coding"][0]["code"] for issue in issues(response)]


def prescriptions_stored(db: Database) -> int:
    with db.snapshot() as tx:
        return store.count_prescriptions(tx)


def test_a_valid_order_is_accepted_stored_and_read_back(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=1).build(items=2)
    body = orjson.dumps(message)
    response = post(client, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = issues(response)
    assert outcome[0]["severity"] == "information" and outcome[0]["code"] == "informational"
    location = response.headers["location"]
    assert location.startswith("/fhir/Bundle/")
    assert prescriptions_stored(db) == 1

    stored = client.get(location)
    assert stored.status_code == 200
    assert stored.content == body, "the Bundle is kept and returned byte for byte"

    item_ids = [
        part.removeprefix("MedicationRequest/").rstrip(",")
        for part in outcome[0]["diagnostics"].split()
        if part.startswith("MedicationRequest/")
    ]
    assert len(item_ids) == 2
    short_form = message["entry"][1]["resource"]["groupIdentifier"]["value"]
    assert outcome[0]["diagnostics"] == (
        f"Prescription {short_form} accepted as {location.removeprefix('/fhir/Bundle/')}; line items: "
        f"MedicationRequest/{item_ids[0]}, MedicationRequest/{item_ids[1]}"
    )
    read = client.get(f"/fhir/MedicationRequest/{item_ids[0]}")
    assert read.status_code == 200
    resource = read.json()
    assert resource["resourceType"] == "MedicationRequest" and resource["id"] == item_ids[0]
    assert resource["groupIdentifier"] == message["entry"][1]["resource"]["groupIdentifier"]


def test_what_intake_stores_is_keyed_in_the_order_it_arrived(client: httpx.Client, db: Database) -> None:
    """Prescriptions and items get time-ordered ids (UUID version 7): the indexes on them grow at one
    end, so a group commit writes a few index pages, not one per prescription per index."""
    ids: list[str] = []
    for seed in (31, 32):
        response = post(client, PrescriptionMessageBuilder(seed=seed).build(items=2))
        assert response.status_code == 200, response.text
        ids.append(response.headers["location"].removeprefix("/fhir/Bundle/"))
        ids += [
            part.removeprefix("MedicationRequest/").rstrip(",")
            for part in issues(response)[0]["diagnostics"].split()
            if part.startswith("MedicationRequest/")
        ]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert all(uuid.UUID(value).version == 7 and str(uuid.UUID(value)) == value for value in ids)
    assert ids[3] > ids[0], "a later prescription's id sorts after an earlier one's"


def test_the_eps_path_is_served_too(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=2).build(items=1)
    response = client.post("/FHIR/R4/$process-message", content=orjson.dumps(message), headers=FHIR_JSON)
    assert response.status_code == 200, response.text


def test_plain_application_json_is_accepted(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=3).build(items=1)
    response = post(client, message, **{"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("breakage", "status", "code"),
    [
        ("bad-nhs-check-digit", 400, "INVALID_CHECK_DIGIT"),
        ("status-bogus", 400, "INVALID_VALUE"),
        ("community-prescription-type", 422, "NOT_HOMECARE_PRESCRIPTION"),
        ("unknown-performer", 422, "UNKNOWN_PROVIDER"),
        ("event-cancel", 400, "MISSING_FIELD"),
        ("no-sender", 400, "MISSING_FIELD"),
        ("unknown-resource-type", 400, "INVALID_RESOURCE_TYPE"),
        ("wrong-json-type", 400, "INVALID_VALUE"),
        ("deceased-patient", 422, "PATIENT_DECEASED"),
    ],
)
def test_a_refused_message_gets_its_status_and_coded_issue_and_stores_nothing(
    client: httpx.Client, db: Database, breakage: str, status: int, code: str
) -> None:
    message = break_message(PrescriptionMessageBuilder(seed=4).build(items=2), breakage)
    response = post(client, message)
    assert response.status_code == status, response.text
    assert code in codes(response)
    for issue in issues(response):
        assert {"severity", "code", "details", "diagnostics"} <= issue.keys()
    assert prescriptions_stored(db) == 0


def test_the_homecare_only_refusal_says_so(client: httpx.Client, db: Database) -> None:
    message = break_message(PrescriptionMessageBuilder(seed=5).build(items=1), "community-prescription-type")
    response = post(client, message)
    assert response.status_code == 422
    assert "homecare prescriptions only" in issues(response)[0]["diagnostics"]
    assert issues(response)[0]["code"] == "business-rule"


def test_a_disabled_provider_takes_no_new_orders(client: httpx.Client, db: Database) -> None:
    from gateway.clock import system_clock
    from gateway.store.providers import update_provider

    with db.write() as session:
        update_provider(session, "VNCEL", now=system_clock(), enabled=False)
    response = post(client, PrescriptionMessageBuilder(seed=6).build(items=1))
    assert response.status_code == 422
    assert codes(response) == ["UNKNOWN_PROVIDER"]
    (issue,) = issues(response)
    assert (issue["code"], issue["diagnostics"], issue["expression"]) == (
        "business-rule",
        "The performer ODS code 'VNCEL' is not accepting orders (disabled)",
        ["Bundle.entry[1].resource.dispenseRequest.performer.identifier.value"],
    )


def test_an_order_for_a_provider_the_gateway_does_not_know_is_refused_and_says_so(
    client: httpx.Client, db: Database
) -> None:
    message = break_message(PrescriptionMessageBuilder(seed=7).build(items=2), "unknown-performer")
    response = post(client, message)
    assert response.status_code == 422
    assert the_issue(response) == (
        "business-rule",
        "UNKNOWN_PROVIDER",
        "The performer ODS code 'ZZZ99' is not a registered homecare provider",
        ["Bundle.entry[1].resource.dispenseRequest.performer.identifier.value"],
    )
    assert prescriptions_stored(db) == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "application/fhir+json", 400, "INVALID_JSON"),
        (b"   ", "application/fhir+json", 400, "INVALID_JSON"),
        (b"{not json", "application/fhir+json", 400, "INVALID_JSON"),
        (b"\xff\xfe", "application/fhir+json", 400, "INVALID_JSON"),
        (b"[1, 2]", "application/fhir+json", 400, "INVALID_VALUE"),
        (b'"Bundle"', "application/fhir+json", 400, "INVALID_VALUE"),
        (b"{}", "application/fhir+json", 400, "MISSING_FIELD"),
        (b'{"resourceType": "Patient"}', "application/fhir+json", 400, "INVALID_RESOURCE_TYPE"),
        (b'{"resourceType": "Bundle", "type": "message"}', "application/fhir+json", 400, "MISSING_FIELD"),
        (
            b'{"resourceType": "Bundle", "type": "message", "entry": "x"}',
            "application/fhir+json",
            400,
            "INVALID_VALUE",
        ),
        (b"<Bundle/>", "application/fhir+xml", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"{}", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
def test_bad_bodies_get_a_clear_outcome_never_a_500(
    client: httpx.Client, db: Database, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = client.post("/fhir/$process-message", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert code in codes(response)


def test_a_body_over_the_limit_is_refused_with_413(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=7).build(items=1)
    message["entry"][1]["resource"]["note"] = [{"text": "x" * (1024 * 1024)}]
    response = post(client, message)
    assert response.status_code == 413
    assert codes(response) == ["PAYLOAD_TOO_LARGE"]


def test_a_chunked_body_over_the_limit_is_refused_with_413(client: httpx.Client, db: Database) -> None:
    def chunks() -> Any:
        yield b'{"resourceType": "Bundle", "entry": ['
        for _ in range(1200):
            yield b'{"fullUrl": "urn:uuid:' + b"0" * 1000 + b'"},'
        yield b"{}]}"

    response = client.post("/fhir/$process-message", content=chunks(), headers=FHIR_JSON)
    assert response.status_code == 413


def test_no_token_or_a_wrong_token_is_401(server: Any, db: Database) -> None:
    message = orjson.dumps(PrescriptionMessageBuilder(seed=8).build(items=1))
    with httpx.Client(base_url=server.base_url) as anonymous:
        response = anonymous.post("/fhir/$process-message", content=message, headers=FHIR_JSON)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.post(
            "/fhir/$process-message", content=message, headers={**FHIR_JSON, "Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        assert issues(wrong)[0]["code"] == "login"
        assert anonymous.get("/fhir/Bundle/" + str(uuid.uuid4())).status_code == 401
    assert prescriptions_stored(db) == 0


def test_resubmitting_the_same_bundle_replays_the_answer_and_creates_nothing(
    client: httpx.Client, db: Database
) -> None:
    body = orjson.dumps(PrescriptionMessageBuilder(seed=9).build(items=3))
    first = post(client, body)
    second = post(client, body)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["location"] == first.headers["location"]
    assert prescriptions_stored(db) == 1


def test_same_identifier_with_different_content_is_409(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=10).build(items=1)
    assert post(client, message).status_code == 200
    changed = dict(message)
    changed["entry"] = [*message["entry"][:-1]]
    response = post(client, changed)
    assert response.status_code == 409
    assert codes(response) == ["DUPLICATE_REJECTED"]
    (issue,) = issues(response)
    assert (issue["code"], issue["diagnostics"], issue["expression"]) == (
        "duplicate",
        "A different message with this Bundle.identifier was already accepted; "
        "a new message needs a new Bundle.identifier",
        ["Bundle.identifier.value"],
    )
    assert prescriptions_stored(db) == 1


def test_a_changed_resend_that_is_now_invalid_is_still_a_conflict(client: httpx.Client, db: Database) -> None:
    message = PrescriptionMessageBuilder(seed=11).build(items=1)
    assert post(client, message).status_code == 200
    response = post(client, break_message(message, "status-bogus"))
    assert response.status_code == 409


def test_a_new_bundle_reusing_an_accepted_prescription_id_is_409(client: httpx.Client, db: Database) -> None:
    builder = PrescriptionMessageBuilder(seed=12)
    first = builder.build(items=1)
    short_form = first["entry"][1]["resource"]["groupIdentifier"]["value"]
    assert post(client, first).status_code == 200
    again = builder.build(items=1, short_form_id=short_form)
    response = post(client, again)
    assert response.status_code == 409
    assert codes(response) == ["DUPLICATE_PRESCRIPTION_ID"]
    (issue,) = issues(response)
    assert (issue["code"], issue["diagnostics"], issue["expression"]) == (
        "duplicate",
        f"Prescription {short_form} was already received from this trust; "
        "a new prescription needs a new prescription ID",
        ["Bundle.entry[1].resource.groupIdentifier.value"],
    )


def test_a_refused_message_can_be_corrected_and_resent_with_the_same_identifier(
    client: httpx.Client, db: Database
) -> None:
    message = PrescriptionMessageBuilder(seed=13).build(items=1)
    assert post(client, break_message(message, "bad-nhs-check-digit")).status_code == 400
    assert post(client, message).status_code == 200
    assert prescriptions_stored(db) == 1


def test_request_and_correlation_ids_are_echoed_or_generated(client: httpx.Client, db: Database) -> None:
    request_id = str(uuid.uuid4())
    response = client.get(
        "/fhir/metadata", headers={"X-Request-ID": request_id, "X-Correlation-ID": "trust-42"}
    )
    assert response.headers["x-request-id"] == request_id
    assert response.headers["x-correlation-id"] == "trust-42"
    generated = client.get("/fhir/metadata", headers={"X-Request-ID": "not a uuid"})
    assert uuid.UUID(generated.headers["x-request-id"])
    assert "x-correlation-id" not in generated.headers


def test_reading_what_does_not_exist_is_a_404_outcome(client: httpx.Client, db: Database) -> None:
    for path in (f"/fhir/MedicationRequest/{uuid.uuid4()}", f"/fhir/Bundle/{uuid.uuid4()}", "/fhir/Nothing"):
        response = client.get(path)
        assert response.status_code == 404
        assert issues(response)[0]["code"] == "not-found"


def test_a_wrong_method_is_a_405_outcome(client: httpx.Client, db: Database) -> None:
    response = client.get("/fhir/$process-message")
    assert response.status_code == 405
    assert issues(response)[0]["code"] == "not-supported"


def test_the_capability_statement_tells_what_is_implemented(client: httpx.Client, db: Database) -> None:
    statement = client.get("/fhir/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    interactions = {r["type"]: {i["code"] for i in r["interaction"]} for r in rest["resource"]}
    assert interactions["MedicationRequest"] == {"read"}
    assert interactions["Task"] == {"read", "search-type", "create", "update", "history-instance"}
    assert interactions["Subscription"] == {"create", "read", "search-type", "delete"}
    assert [op["name"] for op in rest["operation"]] == ["process-message", "validate"]
    events = {m["definition"].rpartition("|")[2] for m in statement["messaging"][0]["supportedMessage"]}
    assert events == {"prescription-order", "prescription-order-update", "dispense-notification"}


def test_the_status_code_system_is_published(client: httpx.Client, db: Database) -> None:
    code_system = client.get("/fhir/CodeSystem/homecare-status").json()
    assert code_system["url"] == "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status"
    codes = {concept["code"]: concept for concept in code_system["concept"]}
    assert len(codes) == 16 and codes["delivered"]["property"][0]["valueBoolean"] is True


def test_a_provider_registered_after_the_directory_was_read_takes_its_first_order(db: Database) -> None:
    directory = ProviderDirectory(db, ttl=300)
    assert directory.get("VNEW1") is None
    with db.write() as session:
        add_provider(
            session,
            ods_code="VNEW1",
            name="New provider",
            adapter="fhir-rest",
            settings={},
            now=system_clock(),
        )
    time.sleep(1.1)  # the directory looks again on a miss at most once a second
    entry = directory.get("VNEW1")
    assert entry is not None and entry.enabled


def test_idempotency_is_kept_per_trust_so_another_trust_may_use_the_same_identifier(
    client: httpx.Client, as_tenant: Any, db: Database
) -> None:
    """A Bundle.identifier names a message of one trust: another trust's message with the same
    identifier is judged afresh (refused for its own problems, or accepted), never answered with the
    first trust's answer nor refused as a conflict with it; the same holds for cancellations."""
    rbb = as_tenant("trust-rbb")
    rba_message = PrescriptionMessageBuilder(seed=14).build(items=1)
    rbb_message = PrescriptionMessageBuilder(seed=15).build(items=1, sender_ods="RBB")
    rbb_message["identifier"] = dict(rba_message["identifier"])
    first = post(client, rba_message)
    assert first.status_code == 200
    refused = post(rbb, break_message(rbb_message, "bad-nhs-check-digit"))
    assert refused.status_code == 400, refused.text
    assert codes(refused) == ["INVALID_CHECK_DIGIT"]
    theirs = post(rbb, rbb_message)
    assert theirs.status_code == 200, theirs.text
    assert theirs.headers["location"] != first.headers["location"], "not a replay of RBA's answer"
    assert prescriptions_stored(db) == 2
    again = post(client, rba_message)
    assert again.status_code == 200 and again.headers["location"] == first.headers["location"]

    rba_cancel = build_cancellation(rba_message)
    assert post(client, rba_cancel).status_code == 200
    rbb_cancel = build_cancellation(rbb_message)
    rbb_cancel["identifier"] = dict(rba_cancel["identifier"])
    cancelled = post(rbb, rbb_cancel)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.headers["location"] == theirs.headers["location"]
    audited = rows(
        db, "SELECT resource_id, reason FROM audit_event WHERE action = 'update' ORDER BY resource_id"
    )
    assert sorted(tuple(row) for row in audited) == sorted(
        (location.removeprefix("/fhir/Bundle/"), "cancel")
        for location in (first.headers["location"], theirs.headers["location"])
    ), "each accepted cancellation is audited as an update of its prescription, with its reason"


def test_code_without_an_event_loop_takes_the_same_way_in(db: Database) -> None:
    """Scripts and tests hand messages to `receive_message_blocking`: the message is stored as sent and
    audited with its request id, the dispatcher is woken for its provider (a ring naming no provider
    would wake it even while that provider's breaker is open), and the same bytes again are a replay
    of the first answer."""
    rings: list[str | None] = []
    context = Context.for_database(db, wake_dispatcher=rings.append)
    try:
        body = orjson.dumps(PrescriptionMessageBuilder(seed=341).build(items=1))
        caller = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))

        def receive(request_id: str) -> IntakeAnswer:
            return receive_message_blocking(
                context, body=body, document=orjson.loads(body), caller=caller, request_id=request_id
            )

        first = receive("request-1")
        assert first.status_code == 200 and not first.replayed
        assert rings == ["VNCEL"]
        assert first.location == f"/fhir/Bundle/{first.prescription_id}"
        stored = scalar(db, "SELECT body FROM inbound_message WHERE id = :id", id=first.prescription_id)
        assert bytes(stored) == body
        assert scalar(
            db, "SELECT request_id FROM inbound_message WHERE id = :id", id=first.prescription_id
        ) == ("request-1")
        again = receive("request-2")
        assert again.replayed and (again.status_code, again.body, again.location) == (
            first.status_code,
            first.body,
            first.location,
        )
        audited = rows(
            db,
            "SELECT request_id, client_id, outcome, resource_id, status FROM audit_event "
            "WHERE request_id IN ('request-1', 'request-2') ORDER BY request_id",
        )
        assert [tuple(row) for row in audited] == [
            ("request-1", "trust-rba", "success", first.prescription_id, 200),
            ("request-2", "trust-rba", "replayed", first.prescription_id, 200),
        ]
    finally:
        context.close()


def test_an_accepted_order_becomes_its_prescription_items_message_events_order_and_audit_rows() -> None:
    """What one transaction writes for an accepted prescription-order, built without HTTP or database:
    the prescription queued for its provider until its validity ends, its items in order, the message as
    received with the answer it got, the `received` and `queued` events, the order in the outbox and the
    audit row."""
    message = PrescriptionMessageBuilder(seed=342).build(items=2)
    for entry in message["entry"][1:3]:
        entry["resource"]["dispenseRequest"]["validityPeriod"] = {"start": "2026-11-30", "end": "2027-02-28"}
    body = orjson.dumps(message)
    result = validate_message(message, body)
    order = result.order
    assert order is not None
    caller = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))
    received = Received(result, body, hashlib.sha256(body).hexdigest(), caller, "request-342")
    now = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)

    new, answer = orders._new_prescription(received, order, prescription_id="p-342", now=now)

    requests = [entry["resource"] for entry in message["entry"][1:3]]
    assert [(item.position, item.item_identifier, orjson.loads(item.resource)) for item in new.items] == [
        (0, requests[0]["identifier"][0]["value"], requests[0]),
        (1, requests[1]["identifier"][0]["value"], requests[1]),
    ]
    assert [item.medicine for item in new.items] == [medicine_name(request) for request in requests]
    assert len({item.item_id for item in new.items}) == 2
    assert (answer.status_code, answer.location, answer.replayed) == (200, "/fhir/Bundle/p-342", False)
    assert orjson.loads(answer.body) == success_outcome(
        f"Prescription {order.short_form_id} accepted as p-342; line items: "
        + ", ".join(f"MedicationRequest/{item.item_id}" for item in new.items)
    )
    assert (
        new.prescription_id,
        new.tenant_ods,
        new.short_form_id,
        new.long_form_id,
        new.provider_ods,
        new.nhs_number,
        new.prescription_type,
        new.status,
        new.valid_until,
        new.created_at,
    ) == (
        "p-342",
        "RBA",
        order.short_form_id,
        order.long_form_id,
        "VNCEL",
        order.nhs_number,
        "1201",
        "queued",
        datetime(2027, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
        now,
    )
    assert new.message == messages_store.NewMessage(
        message_id="p-342",
        tenant_ods="RBA",
        bundle_identifier=message["identifier"]["value"],
        event="prescription-order",
        body_sha256=hashlib.sha256(body).hexdigest(),
        body=body,
        response_status=200,
        response_body=answer.body,
        response_location="/fhir/Bundle/p-342",
        request_id="request-342",
        received_at=now,
    )
    assert list(new.events) == [
        NewEvent("p-342", None, "received", now, now, "gateway", {"request_id": "request-342", "items": 2}),
        NewEvent("p-342", None, "queued", now, now, "gateway", {"provider": "VNCEL"}),
    ]
    assert list(new.outbox) == [outbox.order(prescription_id="p-342", provider_ods="VNCEL", now=now)]
    assert list(new.audit) == [
        AuditRecord(
            occurred_at=now,
            action=Action.CREATE,
            outcome=Outcome.SUCCESS,
            request_id="request-342",
            client_id="trust-rba",
            role="trust",
            ods_code="RBA",
            resource_type="Bundle",
            resource_id="p-342",
            status=200,
        )
    ]


def test_a_refused_message_is_audited_with_its_request_id_and_status(
    client: httpx.Client, db: Database
) -> None:
    request_id = str(uuid.uuid4())
    message = break_message(PrescriptionMessageBuilder(seed=343).build(items=1), "bad-nhs-check-digit")
    assert post(client, message, **{"X-Request-ID": request_id}).status_code == 400
    audited = rows(
        db,
        "SELECT action, outcome, resource_type, resource_id, status FROM audit_event WHERE request_id = :id",
        id=request_id,
    )
    assert [tuple(row) for row in audited] == [("create", "refused", "Bundle", None, 400)]


def test_a_replayed_dispense_notification_is_audited_without_a_resource(db: Database) -> None:
    """A dispense-notification's answer names no single resource (no Location), so its replay's audit
    row has no resource id either."""
    context = Context.for_database(db)
    try:
        order = PrescriptionMessageBuilder(seed=344).build(items=1)
        trust = Caller("trust-rba", Role.TRUST, "RBA", frozenset({"system/MedicationRequest.c"}))
        order_body = orjson.dumps(order)
        accepted = receive_message_blocking(
            context, body=order_body, document=order, caller=trust, request_id="order-344"
        )
        assert accepted.status_code == 200
        provider = Caller(
            "provider-vncel", Role.PROVIDER, "VNCEL", frozenset({"system/MedicationDispense.c"})
        )
        body = orjson.dumps(dispense_notification(order))
        answers = [
            receive_message_blocking(
                context, body=body, document=orjson.loads(body), caller=provider, request_id=request_id
            )
            for request_id in ("dispense-1", "dispense-2")
        ]
        assert [(answer.status_code, answer.location, answer.replayed) for answer in answers] == [
            (200, None, False),
            (200, None, True),
        ]
        replay = rows(db, "SELECT outcome, resource_id FROM audit_event WHERE request_id = 'dispense-2'")
        assert [tuple(row) for row in replay] == [("replayed", None)]
    finally:
        context.close()


def test_an_accepted_message_sent_again_gets_its_answer_even_when_it_would_now_be_refused(
    client: httpx.Client, db: Database
) -> None:
    """A resubmission is judged by what was decided then: after its provider is disabled, the same
    bytes of an accepted order still get the original answer, not the refusal a new order gets."""
    from gateway.store.providers import update_provider

    body = orjson.dumps(PrescriptionMessageBuilder(seed=345).build(items=1))
    first = post(client, body)
    assert first.status_code == 200
    with db.write() as session:
        update_provider(session, "VNCEL", now=system_clock(), enabled=False)
    again = post(client, body)
    assert (again.status_code, again.headers["location"], again.content) == (
        200,
        first.headers["location"],
        first.content,
    )


def test_a_message_from_another_organisation_than_the_callers_is_forbidden(client: httpx.Client) -> None:
    message = PrescriptionMessageBuilder(seed=346).build(items=1, sender_ods="RBB")
    response = post(client, message)
    assert response.status_code == 403
    assert the_issue(response) == (
        "forbidden",
        "ACCESS_DENIED",
        "The message's sender (MessageHeader.sender) is not the organisation this client acts for",
        ["Bundle.entry[0].resource.sender.identifier.value"],
    )
