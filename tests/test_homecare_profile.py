"""The homecare prescription-order profile, rule by rule, without HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from fhir_profiles.builder import BREAKAGES, PrescriptionMessageBuilder, break_message, build_cancellation
from fhir_profiles.homecare import validate_message
from fhir_profiles.identifiers import is_short_form_id_shaped
from fhir_profiles.outcome import status_for

# breakage -> (HTTP status, detail code, the expression of one issue)
EXPECTED: dict[str, tuple[int, str, str]] = {
    "bad-nhs-check-digit": (400, "INVALID_CHECK_DIGIT", "Bundle.entry[3].resource.identifier[0].value"),
    "bad-prescription-check-character": (
        400,
        "FAILURE_TO_PROCESS_MESSAGE",
        "Bundle.entry[1].resource.groupIdentifier.value",
    ),
    "status-bogus": (400, "INVALID_VALUE", "Bundle.entry[1].resource.status"),
    "status-not-active": (400, "INVALID_VALUE", "Bundle.entry[1].resource.status"),
    "intent-bogus": (400, "INVALID_VALUE", "Bundle.entry[1].resource.intent"),
    "intent-plan": (400, "INVALID_VALUE", "Bundle.entry[1].resource.intent"),
    "bundle-type-bogus": (400, "INVALID_VALUE", "Bundle.type"),
    "bundle-type-collection": (400, "INVALID_VALUE", "Bundle.type"),
    "no-dosage-instruction": (400, "MISSING_FIELD", "Bundle.entry[1].resource.dosageInstruction"),
    "no-group-identifier": (400, "MISSING_FIELD", "Bundle.entry[1].resource.groupIdentifier"),
    "no-long-form-id": (
        400,
        "MISSING_FIELD",
        "Bundle.entry[1].resource.groupIdentifier.extension('https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionId')",
    ),
    "community-prescription-type": (
        422,
        "NOT_HOMECARE_PRESCRIPTION",
        "Bundle.entry[1].resource.extension('https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionType').valueCoding.code",
    ),
    "too-many-items": (400, "INVALID_VALUE", "Bundle.entry[5].resource"),
    "no-medication-request": (400, "MISSING_FIELD", "Bundle.entry"),
    "mismatched-group-identifier": (400, "INVALID_VALUE", "Bundle.entry[2].resource.groupIdentifier.value"),
    "mismatched-performer": (400, "INVALID_VALUE", "Bundle.entry[2].resource.dispenseRequest.performer"),
    "mismatched-authored-on": (400, "INVALID_VALUE", "Bundle.entry[2].resource.authoredOn"),
    "duplicate-item-identifier": (400, "INVALID_VALUE", "Bundle.entry[2].resource.identifier"),
    "both-medication-choices": (400, "INVALID_VALUE", "Bundle.entry[1].resource"),
    "dangling-subject-reference": (400, "INVALID_VALUE", "Bundle.entry[1].resource.subject.reference"),
    "no-sender": (400, "MISSING_FIELD", "Bundle.entry[0].resource.sender.identifier.value"),
    "sender-not-ods": (400, "INVALID_VALUE", "Bundle.entry[0].resource.sender.identifier.system"),
    "unknown-resource-type": (400, "INVALID_RESOURCE_TYPE", "Bundle.entry[8].resource.resourceType"),
    "missing-resource-type": (400, "MISSING_FIELD", "Bundle.entry[3].resource.resourceType"),
    "wrong-json-type": (400, "INVALID_VALUE", "Bundle.entry[1].resource.dispenseRequest.quantity.value"),
    "deceased-patient": (422, "PATIENT_DECEASED", "Bundle.entry[3].resource.deceased"),
    "event-cancel": (400, "MISSING_FIELD", "Bundle.entry[1].resource.statusReason"),
    "event-unknown": (400, "INVALID_VALUE", "Bundle.entry[0].resource.eventCoding.code"),
    "no-bundle-identifier": (400, "MISSING_FIELD", "Bundle.identifier.value"),
    "no-performer": (400, "MISSING_FIELD", "Bundle.entry[1].resource.dispenseRequest.performer.identifier"),
}
# Breakages that only the database can see (the provider registry) are tested over HTTP.
DATABASE_RULES = {"unknown-performer"}


def test_every_breakage_has_an_expectation() -> None:
    assert set(BREAKAGES) == set(EXPECTED) | DATABASE_RULES


@pytest.mark.parametrize("items", [1, 2, 3, 4])
def test_valid_orders_of_one_to_four_items_pass(items: int) -> None:
    message = PrescriptionMessageBuilder(seed=items).build(items=items)
    result = validate_message(message)
    assert result.issues == []
    assert result.order is not None
    assert len(result.order.items) == items
    assert result.order.sender_ods == "RBA"
    assert result.order.performer_ods == "VNCEL"


@pytest.mark.parametrize("breakage", sorted(EXPECTED))
def test_each_broken_message_is_refused_with_a_located_coded_issue(breakage: str) -> None:
    status, detail, expression = EXPECTED[breakage]
    message = break_message(PrescriptionMessageBuilder(seed=11).build(items=2), breakage)
    result = validate_message(message)
    assert not result.ok and result.order is None
    assert status_for(result.issues) == status
    found = [(i.detail.value, i.expression) for i in result.issues]
    assert (detail, expression) in found, found
    for issue in result.issues:
        rendered = issue.to_fhir()
        assert rendered["severity"] and rendered["code"] and rendered["diagnostics"]
        assert rendered["details"]["coding"][0]["code"]


def test_every_problem_is_reported_at_once() -> None:
    message = PrescriptionMessageBuilder(seed=5).build(items=2)
    for breakage in ("bad-nhs-check-digit", "status-bogus", "no-dosage-instruction", "bundle-type-bogus"):
        message = break_message(message, breakage)
    details = {(i.detail.value, i.expression) for i in validate_message(message).issues}
    assert ("INVALID_CHECK_DIGIT", "Bundle.entry[3].resource.identifier[0].value") in details
    assert ("INVALID_VALUE", "Bundle.entry[1].resource.status") in details
    assert ("MISSING_FIELD", "Bundle.entry[2].resource.dosageInstruction") in details
    assert ("INVALID_VALUE", "Bundle.type") in details


def test_repeat_intents_are_accepted_as_eps_allows() -> None:
    message = PrescriptionMessageBuilder(seed=2).build(items=1)
    message["entry"][1]["resource"]["intent"] = "original-order"
    assert validate_message(message).ok


def test_shared_fields_may_be_absent_but_must_agree_when_present() -> None:
    message = PrescriptionMessageBuilder(seed=3).build(items=2)
    for entry in message["entry"][1:3]:
        entry["resource"]["authoredOn"] = "2026-11-20T10:00:00+00:00"
        entry["resource"]["dispenseRequest"]["validityPeriod"] = {"start": "2026-11-20", "end": "2027-02-20"}
    assert validate_message(message).ok
    message["entry"][2]["resource"]["dispenseRequest"]["validityPeriod"]["end"] = "2027-03-20"
    expressions = {i.expression for i in validate_message(message).issues}
    assert "Bundle.entry[2].resource.dispenseRequest.validityPeriod" in expressions


def test_other_people_may_be_named_outside_the_medication_requests() -> None:
    message = PrescriptionMessageBuilder(seed=4).build(items=1)
    message["entry"].append(
        {
            "fullUrl": "urn:uuid:5a0f4f0a-8a3e-4c55-9f1e-8f4d3e2c1b0a",
            "resource": {
                "resourceType": "CommunicationRequest",
                "status": "unknown",
                "recipient": [
                    {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9453740519"}}
                ],
            },
        }
    )
    assert validate_message(message).ok


def test_a_required_binding_code_in_a_data_type_is_checked() -> None:
    message = PrescriptionMessageBuilder(seed=6).build(items=1)
    message["entry"][2]["resource"]["name"][0]["use"] = "nickname-ish"
    issues = validate_message(message).issues
    assert [(i.detail.value, i.expression) for i in issues] == [
        ("INVALID_VALUE", "Bundle.entry[2].resource.name[0].use")
    ]


def test_an_element_fhir_does_not_define_is_refused() -> None:
    message = PrescriptionMessageBuilder(seed=7).build(items=1)
    message["entry"][1]["resource"]["colour"] = "blue"
    issues = validate_message(message).issues
    assert [(i.code.value, i.expression) for i in issues] == [
        ("structure", "Bundle.entry[1].resource.colour")
    ]


def test_a_valid_fhir_resource_the_fast_models_do_not_cover_is_accepted() -> None:
    message = PrescriptionMessageBuilder(seed=8).build(items=1)
    message["entry"].append(
        {
            "fullUrl": "urn:uuid:0b7bf1c6-3c57-4d6c-9d6b-1b2f3c4d5e6f",
            "resource": {"resourceType": "Location", "status": "active", "name": "Outpatient pharmacy"},
        }
    )
    assert validate_message(message).ok
    message["entry"][-1]["resource"]["status"] = 7
    issues = validate_message(message).issues
    assert [i.expression for i in issues] == ["Bundle.entry[7].resource.status"]


def _entry(message: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == resource_type)


def test_references_the_gateway_does_not_follow_need_not_resolve() -> None:
    message = PrescriptionMessageBuilder(seed=3).build(items=2)
    _entry(message, "Provenance")["target"].append({"reference": f"urn:uuid:{uuid.uuid4()}"})
    _entry(message, "Provenance")["agent"][0]["who"] = {"reference": "Practitioner/not-in-this-bundle"}
    assert validate_message(message).ok


@pytest.mark.parametrize(
    ("resource_type", "element", "expression"),
    [
        ("MessageHeader", "focus", "Bundle.entry[0].resource.focus[0].reference"),
        ("MedicationRequest", "requester", "Bundle.entry[1].resource.requester.reference"),
        ("MedicationRequest", "performer", "Bundle.entry[1].resource.performer.reference"),
        ("PractitionerRole", "practitioner", "Bundle.entry[3].resource.practitioner.reference"),
        ("PractitionerRole", "organization", "Bundle.entry[3].resource.organization.reference"),
    ],
)
def test_references_the_gateway_follows_must_resolve(
    resource_type: str, element: str, expression: str
) -> None:
    message = PrescriptionMessageBuilder(seed=3).build(items=1)
    dangling = {"reference": f"urn:uuid:{uuid.uuid4()}"}
    resource = _entry(message, resource_type)
    resource[element] = [dangling] if element == "focus" else dangling
    issues = validate_message(message).issues
    assert ("INVALID_VALUE", expression) in [(i.detail.value, i.expression) for i in issues], issues


def test_a_cancellation_needs_a_prescription_id_with_its_right_check_character() -> None:
    order = PrescriptionMessageBuilder(seed=11).build(items=2)
    cancel = build_cancellation(order)
    assert validate_message(cancel).ok
    for entry in cancel["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            value = resource["groupIdentifier"]["value"]
            wrong = next(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c != value[-1])
            resource["groupIdentifier"]["value"] = value[:-1] + wrong
            assert is_short_form_id_shaped(resource["groupIdentifier"]["value"]), "the shape is right"
    result = validate_message(cancel)
    assert not result.ok and result.cancellation is None
    assert {issue.expression for issue in result.issues} == {
        "Bundle.entry[1].resource.groupIdentifier.value",
        "Bundle.entry[2].resource.groupIdentifier.value",
    }
