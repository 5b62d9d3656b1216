"""INTAKE and IDEM: `$process-message` takes valid EPS homecare orders, refuses each broken variant
with the right status, issue code and FHIRPath `expression`, and is idempotent per Bundle.identifier."""

from __future__ import annotations

import json
from collections.abc import Callable

from conformance.checks import expect, expect_refusal, expect_status, issues_of
from conformance.identifiers import UUID_PATTERN, wrong_check_character, wrong_nhs_check_digit
from conformance.messages import Message
from conformance.model import Evidence, Requirement, Role, conformance_test
from conformance.roles.gateway.context import FHIR_JSON, PROCESS_MESSAGE, GatewayRun

ROLE = Role.GATEWAY
INTAKE = "DESIGN.md §3"
DECISIONS = "DESIGN.md §10 Intake"
INVALID = {"value", "invalid", "processing", "code-invalid"}


def _refused(
    run: GatewayRun,
    change: Callable[[Message], None],
    status: int,
    code: str | set[str],
    expression: str | None,
    *,
    items: int = 1,
) -> None:
    order = run.new_order(items=items)
    change(order)
    response = run.send("trust_a", order)
    expect_refusal(response, status, code, expression)
    expect("location" not in response.headers, "a refused message must not answer with a Location")


def _patient_path(order: Message) -> str:
    return f"Bundle.entry[{order.entry_index('Patient')}].resource.identifier[0].value"


@conformance_test(
    "INTAKE-01",
    "A valid one-item homecare order is accepted: 200, an informational OperationOutcome and a Location",
    Requirement(
        DECISIONS, "success is 200 with an informational OperationOutcome and a Location of ids only"
    ),
    role=ROLE,
)
def valid_order(run: GatewayRun, evidence: Evidence) -> None:
    order, response = run.accepted_order("one-item")
    expect_status(response, 200)
    issues = issues_of(response)
    expect(
        issues[0].get("severity") == "information" and issues[0].get("code") == "informational",
        f"the first issue is {issues[0].get('severity')}/{issues[0].get('code')}, not information/informational",
    )
    location = response.headers.get("location", "")
    expect(location != "", "no Location header on an accepted message")
    expect(
        order.nhs_number not in location and order.short_form_id not in location,
        "the Location carries prescription or patient identifiers; it must carry the gateway's ids only",
    )


@conformance_test(
    "INTAKE-02",
    "A valid four-item order is accepted and gets one Task per line item",
    Requirement(
        INTAKE, "1-4 MedicationRequests sharing one groupIdentifier; one Task per line item (§10 Status)"
    ),
    role=ROLE,
)
def four_items(run: GatewayRun, evidence: Evidence) -> None:
    order, response = run.accepted_order("four-items", items=4)
    expect_status(response, 200)
    tasks = run.tasks("trust_a", order)
    seen = sorted(str((t.get("focus") or {}).get("identifier", {}).get("value")) for t in tasks)
    expect(
        seen == sorted(order.item_ids), f"expected a Task for each of the 4 line items, found {len(tasks)}"
    )


@conformance_test(
    "INTAKE-03",
    "A short-form prescription ID with a wrong MOD 37-2 check character is refused (400)",
    Requirement(
        "EPS / DESIGN.md §3",
        "groupIdentifier XXXXXX-XXXXXX-XXXXXC with its ISO 7064 MOD 37-2 check character",
    ),
    role=ROLE,
)
def bad_check_character(run: GatewayRun, evidence: Evidence) -> None:
    def change(order: Message) -> None:
        for request in order.entries("MedicationRequest"):
            request["groupIdentifier"]["value"] = wrong_check_character(order.short_form_id)

    _refused(run, change, 400, INVALID, "Bundle.entry[1].resource.groupIdentifier.value")


@conformance_test(
    "INTAKE-04",
    "An NHS number failing Modulus 11 is refused (400) at the Patient's identifier",
    Requirement("NHS number / DESIGN.md §3", "the patient's NHS number passes Modulus 11"),
    role=ROLE,
)
def bad_nhs_number(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    order.entries("Patient")[0]["identifier"][0]["value"] = wrong_nhs_check_digit(order.nhs_number)
    expect_refusal(run.send("trust_a", order), 400, INVALID, _patient_path(order))


@conformance_test(
    "INTAKE-05",
    "A prescription type outside the homecare family (12xx) is refused: 422 business-rule",
    Requirement(DECISIONS, "not a homecare prescription type is 422 with issue.code business-rule"),
    role=ROLE,
)
def not_homecare(run: GatewayRun, evidence: Evidence) -> None:
    def change(order: Message) -> None:
        for request in order.entries("MedicationRequest"):
            request["extension"][0]["valueCoding"]["code"] = "0101"

    _refused(run, change, 422, "business-rule", "Bundle.entry[1].resource.extension*")


@conformance_test(
    "INTAKE-06",
    "An order for an unknown provider (performer ODS) is refused: 422 business-rule",
    Requirement(DECISIONS, "unknown provider is 422 business-rule"),
    role=ROLE,
)
def unknown_provider(run: GatewayRun, evidence: Evidence) -> None:
    def change(order: Message) -> None:
        for request in order.entries("MedicationRequest"):
            request["dispenseRequest"]["performer"]["identifier"]["value"] = run.config.unknown_provider_ods

    _refused(run, change, 422, "business-rule", "Bundle.entry[1].resource.dispenseRequest.performer*")


@conformance_test(
    "INTAKE-07",
    "More than four line items are refused (400)",
    Requirement(INTAKE, "1-4 MedicationRequests per prescription"),
    role=ROLE,
)
def five_items(run: GatewayRun, evidence: Evidence) -> None:
    def change(order: Message) -> None:
        fifth = json.loads(json.dumps(order.bundle["entry"][1]))
        fifth["fullUrl"] = "urn:uuid:5e1f0000-0000-4000-8000-000000000005"
        fifth["resource"]["id"] = "5e1f0000-0000-4000-8000-000000000005"
        fifth["resource"]["identifier"][0]["value"] = "5e1f0000-0000-4000-8000-0000000000a5"
        order.bundle["entry"].insert(5, fifth)
        order.header()["focus"].append({"reference": fifth["fullUrl"]})

    _refused(run, change, 400, INVALID | {"structure", "business-rule"}, "Bundle.entry*", items=4)


@conformance_test(
    "INTAKE-08",
    "A message without a sender is refused (400, required)",
    Requirement(INTAKE, "a message without MessageHeader.sender is refused (400, MISSING_FIELD)"),
    role=ROLE,
)
def no_sender(run: GatewayRun, evidence: Evidence) -> None:
    _refused(
        run,
        lambda order: order.header().pop("sender"),
        400,
        {"required", "invalid", "structure"},
        "Bundle.entry[0].resource.sender*",
    )


@conformance_test(
    "INTAKE-09",
    "A message whose sender is another trust is refused: 403 forbidden",
    Requirement(DECISIONS, "a message whose sender is not the caller's ODS is 403 (forbidden)"),
    role=ROLE,
)
def other_sender(run: GatewayRun, evidence: Evidence) -> None:
    order = run.builder("trust_b").order(run.provider_ods)
    expect_refusal(run.send("trust_a", order), 403, "forbidden")


@conformance_test(
    "INTAKE-10",
    "A body that is not FHIR JSON is refused: 415",
    Requirement(INTAKE, "415 for the wrong media type"),
    role=ROLE,
)
def wrong_media_type(run: GatewayRun, evidence: Evidence) -> None:
    response = run.http.post(
        PROCESS_MESSAGE,
        content=b"<Bundle xmlns='http://hl7.org/fhir'/>",
        headers={"Content-Type": "application/fhir+xml", **run.auth("trust_a")},
    )
    expect_refusal(response, 415, {"not-supported", "invalid", "structure"})


@conformance_test(
    "INTAKE-11",
    "Malformed JSON is refused with an OperationOutcome (400), never a 500",
    Requirement("DESIGN.md §6", "bad input gets a clear OperationOutcome, never a stack trace"),
    role=ROLE,
)
def malformed_json(run: GatewayRun, evidence: Evidence) -> None:
    for body in (b'{"resourceType": "Bundle", "type": "message", ', b"[]", b'"just a string"'):
        response = run.http.post(PROCESS_MESSAGE, content=body, headers={**FHIR_JSON, **run.auth("trust_a")})
        expect_refusal(response, 400, {"structure", "invalid", "value", "required"})


@conformance_test(
    "INTAKE-12",
    "Line items with different groupIdentifiers are refused (400) at the item that differs",
    Requirement(INTAKE, "every MedicationRequest shares one groupIdentifier"),
    role=ROLE,
)
def mismatched_group(run: GatewayRun, evidence: Evidence) -> None:
    other = run.new_order().short_form_id

    def change(order: Message) -> None:
        order.entries("MedicationRequest")[1]["groupIdentifier"]["value"] = other

    _refused(
        run,
        change,
        400,
        INVALID | {"business-rule", "invariant"},
        "Bundle.entry[2].resource.groupIdentifier*",
        items=2,
    )


@conformance_test(
    "INTAKE-13",
    "A JSON object with a repeated key is refused (400)",
    Requirement("DESIGN.md §10 Wave 2", "a JSON object with a repeated key is refused (400)"),
    role=ROLE,
)
def repeated_key(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    body = order.body().replace(b'"type":"message"', b'"type":"history","type":"message"', 1)
    expect(body != order.body(), "the suite could not build its repeated-key message")
    expect_refusal(run.send("trust_a", body), 400, {"structure", "invalid", "value"})


@conformance_test(
    "INTAKE-14",
    "An NHS number with a non-ASCII digit is refused (400)",
    Requirement("DESIGN.md §10 Wave 2", "identifiers are checked as ASCII over the whole value"),
    role=ROLE,
)
def unicode_digit(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    # The check digit written as the ARABIC-INDIC digit of the same value: Modulus 11 still holds for
    # a reader that takes any Unicode digit, so only the ASCII rule refuses it (whatever the number).
    check_digit = chr(0x0660 + int(order.nhs_number[9]))
    order.entries("Patient")[0]["identifier"][0]["value"] = order.nhs_number[:9] + check_digit
    expect_refusal(run.send("trust_a", order), 400, INVALID, _patient_path(order))


@conformance_test(
    "INTAKE-15",
    "A code outside a required value set (MedicationRequest.status 'bogus') is refused (400)",
    Requirement("FHIR R4 / DESIGN.md §8", "codes bound to a required value set are checked"),
    role=ROLE,
)
def bogus_status(run: GatewayRun, evidence: Evidence) -> None:
    _refused(
        run,
        lambda order: order.entries("MedicationRequest")[0].update(status="bogus"),
        400,
        INVALID,
        "Bundle.entry[1].resource.status",
    )


@conformance_test(
    "INTAKE-16",
    "Every problem of a message is reported at once",
    Requirement(INTAKE, "validation returns every problem at once as an OperationOutcome"),
    role=ROLE,
)
def every_problem(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    order.entries("MedicationRequest")[0]["status"] = "bogus"
    order.entries("Patient")[0]["identifier"][0]["value"] = wrong_nhs_check_digit(order.nhs_number)
    response = run.send("trust_a", order)
    expect_refusal(response, 400, INVALID, "Bundle.entry[1].resource.status")
    expect_refusal(response, 400, INVALID, _patient_path(order))


@conformance_test(
    "INTAKE-17",
    "The EPS path POST /FHIR/R4/$process-message is served too",
    Requirement(DECISIONS, "also served at the EPS path"),
    role=ROLE,
)
def eps_path(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    response = run.http.post(
        "/FHIR/R4/$process-message", content=order.body(), headers={**FHIR_JSON, **run.auth("trust_a")}
    )
    expect_status(response, 200)


@conformance_test(
    "INTAKE-18",
    "X-Request-ID is echoed when sent, and generated (a UUID) when not",
    Requirement(DECISIONS, "X-Request-ID (a UUID) is honoured and echoed; generated when absent"),
    role=ROLE,
)
def request_id(run: GatewayRun, evidence: Evidence) -> None:
    mine = "0f3c6a2e-58d4-4a0e-9b9f-3f1f0b7c2d11"
    echoed = run.http.get("/fhir/metadata", headers={"X-Request-ID": mine})
    expect(
        echoed.headers.get("x-request-id") == mine,
        f"X-Request-ID not echoed: {echoed.headers.get('x-request-id')!r}",
    )
    generated = run.http.get("/fhir/metadata").headers.get("x-request-id", "")
    expect(
        UUID_PATTERN.fullmatch(generated.lower()) is not None,
        f"no generated X-Request-ID UUID: {generated!r}",
    )


@conformance_test(
    "INTAKE-19",
    "A body over the size limit is refused: 413",
    Requirement(INTAKE, "413 for too large (the limit is the gateway's setting; the suite sends 3 MiB)"),
    role=ROLE,
    optional=True,
)
def too_large(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    order.entries("MedicationRequest")[0]["note"] = [{"text": "x" * (3 * 1024 * 1024)}]
    expect_refusal(run.send("trust_a", order), 413, {"too-long", "too-costly", "invalid", "structure"})


@conformance_test(
    "IDEM-01",
    "Resending the same Bundle returns the original answer and creates nothing",
    Requirement(INTAKE, "resubmitting the same Bundle returns the original outcome and creates nothing"),
    role=ROLE,
)
def identical_resend(run: GatewayRun, evidence: Evidence) -> None:
    order, first = run.accepted_order("resent", items=2)
    again = run.send("trust_a", order)
    expect_status(again, 200)
    expect(
        again.headers.get("location") == first.headers.get("location"),
        f"the resend answered Location {again.headers.get('location')!r}, not the original",
    )
    expect(len(run.tasks("trust_a", order)) == 2, "the resend created more line items")


@conformance_test(
    "IDEM-02",
    "The same Bundle.identifier with different content is refused: 409 duplicate",
    Requirement(INTAKE, "the same identifier with different content is a 409"),
    role=ROLE,
)
def same_identifier_other_content(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("resent", items=2)
    changed = order.copy()
    changed.entries("MedicationRequest")[0]["dosageInstruction"][0]["text"] = "Changed after sending"
    expect_refusal(run.send("trust_a", changed), 409, {"duplicate", "conflict"})


@conformance_test(
    "IDEM-03",
    "A new Bundle reusing an accepted prescription ID is refused: 409 duplicate",
    Requirement(DECISIONS, "a short-form prescription ID is unique per trust (DUPLICATE_PRESCRIPTION_ID)"),
    role=ROLE,
)
def reused_prescription_id(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("one-item")
    reused = order.copy()
    reused.fresh_identifier(run.builder().rng)
    expect_refusal(run.send("trust_a", reused), 409, {"duplicate", "conflict"})


@conformance_test(
    "IDEM-04",
    "A refused message stores nothing: corrected and resent under the same identifier, it is accepted",
    Requirement(DECISIONS, "only accepted requests are replayed; a corrected resend is processed afresh"),
    role=ROLE,
)
def corrected_resend(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    broken = order.copy()
    broken.entries("Patient")[0]["identifier"][0]["value"] = wrong_nhs_check_digit(order.nhs_number)
    expect_status(run.send("trust_a", broken), 400)
    expect_status(run.send("trust_a", order), 200)


@conformance_test(
    "IDEM-05",
    "Two trusts may use the same Bundle.identifier: idempotency is per trust",
    Requirement(DECISIONS, "idempotency is keyed per trust"),
    role=ROLE,
)
def per_trust_keys(run: GatewayRun, evidence: Evidence) -> None:
    mine = run.new_order("trust_a")
    theirs = run.new_order("trust_b")
    theirs.bundle["identifier"]["value"] = mine.identifier
    expect_status(run.send("trust_a", mine), 200)
    expect_status(run.send("trust_b", theirs), 200)
