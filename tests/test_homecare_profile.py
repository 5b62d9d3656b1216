"""The homecare message profiles (prescription-order, its cancellation, dispense-notification), rule by rule,
without HTTP."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_profiles import codes
from fhir_profiles.builder import BREAKAGES, PrescriptionMessageBuilder, break_message, build_cancellation
from fhir_profiles.homecare import (
    ITEM_IDENTIFIER_RULE,
    NON_DISPENSING_REASON_URL,
    MessageEnvelope,
    validate_message,
)
from fhir_profiles.identifiers import ODS_SYSTEM, is_short_form_id_shaped
from fhir_profiles.outcome import status_for
from gateway.domain.orders import end_of_validity

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


# --- dispense-notification -------------------------------------------------------------------------

DISPENSE_STATUS_REASON_SYSTEM = "https://fhir.nhs.uk/CodeSystem/medicationdispense-status-reason"
HANDED_OVER = "2026-11-23T10:00:00+00:00"


def dispense_notification(order: dict[str, Any], *, provider: str = "VNCEL") -> dict[str, Any]:
    """The provider's dispense-notification for every item of `order`: one MedicationDispense per item,
    each authorised by a contained copy of its MedicationRequest (`#m1`), as in the EPS examples."""
    header = copy.deepcopy(order["entry"][0])
    header["resource"]["eventCoding"] = {
        "system": codes.MESSAGE_EVENT_SYSTEM,
        "code": codes.EVENT_DISPENSE_NOTIFICATION,
    }
    header["resource"]["sender"] = {"identifier": {"system": ODS_SYSTEM, "value": provider}}
    header["resource"]["focus"] = []
    entries = [header]
    for request in _requests(order):
        contained = copy.deepcopy(request)
        contained["id"] = "m1"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "MedicationDispense",
                    "status": "completed",
                    "contained": [
                        {"resourceType": "PractitionerRole", "id": "performer", "active": True},
                        contained,
                    ],
                    "medicationCodeableConcept": request["medicationCodeableConcept"],
                    "authorizingPrescription": [{"reference": "#m1"}],
                    "whenHandedOver": HANDED_OVER,
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "https://tools.ietf.org/html/rfc4122", "value": str(uuid.uuid4())},
        "type": "message",
        "entry": entries,
    }


def _requests(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]


def _item_id(request: dict[str, Any]) -> str:
    (identifier,) = request["identifier"]
    return str(identifier["value"])


def _issues(message: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    return [
        (i.code.value, i.detail.value, i.diagnostics, i.expression) for i in validate_message(message).issues
    ]


def _not_dispensed(dispense: dict[str, Any], code: Any) -> None:
    dispense.setdefault("extension", []).append(
        {
            "url": NON_DISPENSING_REASON_URL,
            "valueCoding": {"system": DISPENSE_STATUS_REASON_SYSTEM, "code": code},
        }
    )


def test_a_dispense_notification_names_each_item_by_the_request_it_contains() -> None:
    order = PrescriptionMessageBuilder(seed=21).build(items=2)
    message = dispense_notification(order)
    message["entry"][2]["resource"].pop("whenHandedOver")
    result = validate_message(message)
    assert result.issues == [] and result.dispense is not None
    assert result.dispense.bundle_identifier == message["identifier"]["value"]
    assert result.dispense.sender_ods == "VNCEL"
    short_form = _requests(order)[0]["groupIdentifier"]["value"]
    assert [
        (d.short_form_id, d.item_identifier, d.handed_over, d.resource) for d in result.dispense.dispenses
    ] == [
        (short_form, _item_id(_requests(order)[0]), HANDED_OVER, message["entry"][1]["resource"]),
        (short_form, _item_id(_requests(order)[1]), None, message["entry"][2]["resource"]),
    ]


def test_a_dispense_may_name_its_item_by_identifier_with_the_prescription_id_in_an_extension() -> None:
    order = PrescriptionMessageBuilder(seed=22).build(items=1)
    message = dispense_notification(order)
    dispense = message["entry"][1]["resource"]
    (request,) = _requests(order)
    dispense.pop("contained")
    dispense["authorizingPrescription"] = [
        {
            "extension": [
                {"url": "https://example.org/another-extension", "valueString": "first"},
                {
                    "url": codes.PRESCRIPTION_ID_URL,
                    "valueIdentifier": {
                        "system": "https://fhir.nhs.uk/Id/prescription-order-number",
                        "value": request["groupIdentifier"]["value"],
                    },
                },
            ],
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/prescription-order-item-number",
                "value": _item_id(request),
            },
        }
    ]
    result = validate_message(message)
    assert result.issues == [] and result.dispense is not None
    assert [(d.short_form_id, d.item_identifier) for d in result.dispense.dispenses] == [
        (request["groupIdentifier"]["value"], _item_id(request))
    ]


def test_each_dispense_without_its_authorising_request_is_reported() -> None:
    order = PrescriptionMessageBuilder(seed=23).build(items=3)
    message = dispense_notification(order)
    message["entry"][1]["resource"]["authorizingPrescription"] = [{"reference": "#m2"}]
    message["entry"][2]["resource"]["contained"][1]["identifier"][0]["system"] = "https://example.org/item"
    message["entry"][3]["resource"]["contained"][1].pop("groupIdentifier")
    wanted = "The authorising MedicationRequest with its prescription ID and line item identifier is required"
    assert _issues(message) == [
        ("required", "MISSING_FIELD", wanted, f"Bundle.entry[{index}].resource.authorizingPrescription")
        for index in (1, 2, 3)
    ]
    assert validate_message(message).dispense is None


def test_each_dispense_whose_prescription_id_or_item_identifier_is_malformed_is_reported() -> None:
    order = PrescriptionMessageBuilder(seed=24).build(items=2)
    message = dispense_notification(order)
    first, second = (message["entry"][index]["resource"]["contained"][1] for index in (1, 2))
    first["groupIdentifier"]["value"] = "A0548B-A99968"
    second["identifier"][0]["value"] = "item 2"
    wanted = (
        "The prescription ID must have the form XXXXXX-XXXXXX-XXXXXC. "
        "A line item identifier is 1-64 ASCII letters, digits, '.' and '-'"
    )
    assert _issues(message) == [
        ("value", "INVALID_VALUE", wanted, f"Bundle.entry[{index}].resource.authorizingPrescription")
        for index in (1, 2)
    ]


def test_a_dispense_notification_needs_a_medication_dispense() -> None:
    message = dispense_notification(PrescriptionMessageBuilder(seed=25).build(items=1))
    message["entry"] = message["entry"][:1]
    assert _issues(message) == [
        ("required", "MISSING_FIELD", "At least one MedicationDispense is required", "Bundle.entry")
    ]


def test_every_dispense_of_a_notification_gives_the_same_non_dispensing_reason_as_eps_requires() -> None:
    order = PrescriptionMessageBuilder(seed=26).build(items=3)
    agreeing = dispense_notification(order)
    for entry in agreeing["entry"][1:]:
        _not_dispensed(entry["resource"], "0008")
    assert validate_message(agreeing).ok
    eps_answer = (
        "invalid",
        "INVALID_VALUE",
        "Expected all MedicationDispenses to have the same value for "
        "MedicationDispense.extension:prescriptionNonDispensingReason",
        "MedicationDispense.extension:prescriptionNonDispensingReason",
    )
    differing = dispense_notification(order)
    _not_dispensed(differing["entry"][1]["resource"], "0008")
    _not_dispensed(differing["entry"][2]["resource"], "0004")
    _not_dispensed(differing["entry"][3]["resource"], "0008")
    assert _issues(differing) == [eps_answer]
    one_without = dispense_notification(order)
    _not_dispensed(one_without["entry"][2]["resource"], "0004")
    assert _issues(one_without) == [eps_answer]


# --- prescription-order-update (cancellation) ------------------------------------------------------

CANCELLATION_REASON_SYSTEM = "https://fhir.nhs.uk/CodeSystem/medicationrequest-status-reason"


def test_a_cancellation_names_each_item_to_cancel_with_its_eps_reason() -> None:
    order = PrescriptionMessageBuilder(seed=31).build(items=3)
    cancel = build_cancellation(order, item_positions=[0, 2], reason=("0002", "Clinical contra-indication"))
    first, second = _requests(cancel)
    first["statusReason"]["coding"][:0] = [
        {"system": "https://example.org/local-reasons", "code": "L1"},
        {"system": CANCELLATION_REASON_SYSTEM, "display": "A reason without its code"},
    ]
    second["statusReason"]["coding"][0].pop("display")
    result = validate_message(cancel)
    assert result.issues == [] and result.cancellation is not None
    assert result.cancellation.bundle_identifier == cancel["identifier"]["value"]
    assert result.cancellation.sender_ods == "RBA"
    assert result.cancellation.short_form_id == _requests(order)[0]["groupIdentifier"]["value"]
    assert result.cancellation.items == (
        (_item_id(_requests(order)[0]), "0002", "Clinical contra-indication"),
        (_item_id(_requests(order)[2]), "0002", ""),
    )


def test_every_problem_of_a_cancellation_is_reported_at_once() -> None:
    cancel = build_cancellation(PrescriptionMessageBuilder(seed=32).build(items=4))
    first, second, third, fourth = _requests(cancel)
    first["status"] = "active"
    second["statusReason"]["coding"][0]["system"] = "https://example.org/local-reasons"
    third["identifier"][0]["system"] = "https://example.org/item"
    fourth["identifier"][0]["value"] = "item 4"
    fourth["groupIdentifier"]["value"] = "A0548B-A99968"
    assert _issues(cancel) == [
        (
            "value",
            "INVALID_VALUE",
            "A cancellation's MedicationRequest has status 'cancelled'",
            "Bundle.entry[1].resource.status",
        ),
        (
            "required",
            "MISSING_FIELD",
            f"The cancellation reason ({CANCELLATION_REASON_SYSTEM}) is required",
            "Bundle.entry[2].resource.statusReason",
        ),
        (
            "required",
            "MISSING_FIELD",
            "The line item identifier (https://fhir.nhs.uk/Id/prescription-order-item-number) is required",
            "Bundle.entry[3].resource.identifier",
        ),
        (
            "value",
            "INVALID_VALUE",
            "A valid short-form prescription ID is required",
            "Bundle.entry[4].resource.groupIdentifier.value",
        ),
        ("value", "INVALID_VALUE", ITEM_IDENTIFIER_RULE, "Bundle.entry[4].resource.identifier"),
    ]
    assert validate_message(cancel).cancellation is None


def test_a_cancellation_needs_a_medication_request_and_at_most_four() -> None:
    order = PrescriptionMessageBuilder(seed=33).build(items=4)
    cancel = build_cancellation(order)
    assert validate_message(cancel).ok, "four items may be cancelled at once"
    fifth = copy.deepcopy(cancel["entry"][4])
    fifth["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
    fifth["resource"]["identifier"][0]["value"] = str(uuid.uuid4())
    cancel["entry"].insert(5, fifth)
    assert _issues(cancel) == [
        ("value", "INVALID_VALUE", "A prescription has at most 4 items to cancel", "Bundle.entry")
    ]
    cancel["entry"] = [
        entry for entry in cancel["entry"] if entry["resource"]["resourceType"] != "MedicationRequest"
    ]
    cancel["entry"][0]["resource"]["focus"] = []
    assert _issues(cancel) == [
        (
            "required",
            "MISSING_FIELD",
            "A MedicationRequest for each line item to cancel is required",
            "Bundle.entry",
        )
    ]


def test_the_items_of_a_cancellation_belong_to_one_prescription() -> None:
    cancel = build_cancellation(PrescriptionMessageBuilder(seed=34).build(items=2))
    other = PrescriptionMessageBuilder(seed=35).build(items=1)
    _requests(cancel)[1]["groupIdentifier"]["value"] = _requests(other)[0]["groupIdentifier"]["value"]
    assert _issues(cancel) == [
        (
            "value",
            "INVALID_VALUE",
            "Every item to cancel must belong to the same prescription",
            "Bundle.entry",
        )
    ]
    assert validate_message(cancel).cancellation is None


def test_a_cancellation_of_a_prescription_that_is_not_homecare_is_refused() -> None:
    cancel = build_cancellation(PrescriptionMessageBuilder(seed=36).build(items=2))
    first, second = _requests(cancel)
    first.pop("extension")
    second["extension"][0]["valueCoding"]["code"] = "0101"
    result = validate_message(cancel)
    assert status_for(result.issues) == 422 and result.cancellation is None
    assert _issues(cancel) == [
        (
            "business-rule",
            "NOT_HOMECARE_PRESCRIPTION",
            "This gateway takes homecare prescriptions only (prescription type 12xx)",
            f"Bundle.entry[1].resource.extension('{codes.PRESCRIPTION_TYPE_URL}')",
        )
    ]


def test_a_non_dispensing_reason_of_the_wrong_json_type_is_one_located_issue() -> None:
    """Rules read the parsed JSON defensively: an object where the reason's code belongs is reported by
    the structural check, once, and does not stop the reading of the rest."""
    message = dispense_notification(PrescriptionMessageBuilder(seed=27).build(items=2))
    _not_dispensed(message["entry"][1]["resource"], {"code": "0008"})
    _not_dispensed(message["entry"][2]["resource"], {"code": "0008"})
    message["entry"][2]["resource"]["contained"][1]["identifier"][0]["value"] = "item 2"
    assert [(detail, expression) for _, detail, _, expression in _issues(message)] == [
        ("INVALID_VALUE", "Bundle.entry[1].resource.extension[0].valueCoding.code"),
        ("INVALID_VALUE", "Bundle.entry[2].resource.extension[0].valueCoding.code"),
        ("INVALID_VALUE", "Bundle.entry[2].resource.authorizingPrescription"),
    ]


# --- one rule, one located issue: the whole issue, diagnostics included ---------------------------

ITEM_SYSTEM = "https://fhir.nhs.uk/Id/prescription-order-item-number"
LONG_FORM = f"Bundle.entry[1].resource.groupIdentifier.extension('{codes.PRESCRIPTION_ID_URL}')"
TYPE_EXTENSION = f"Bundle.entry[1].resource.extension('{codes.PRESCRIPTION_TYPE_URL}')"
ODS_RULE = f"The homecare provider must be identified by a valid ODS code ({ODS_SYSTEM})"
_DROP = object()


def _change(index: int, path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or with `_DROP`, remove) the element at `path` (dotted; numbers index lists) of entry `index`."""

    def change(message: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = message["entry"][index]["resource"]
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DROP:
            del node[last]
        else:
            node[last] = value

    return change


def _repeat_first_item_identifier(message: dict[str, Any]) -> None:
    first = message["entry"][1]["resource"]["identifier"][0]["value"]
    message["entry"][2]["resource"]["identifier"][0]["value"] = first


def _both_subjects_name_the_practitioner_role(message: dict[str, Any]) -> None:
    for request in _requests(message):
        request["subject"] = {"reference": message["entry"][4]["fullUrl"]}


DECEASED = (
    "business-rule",
    "PATIENT_DECEASED",
    "The patient is recorded as deceased; a homecare prescription cannot be supplied",
    "Bundle.entry[3].resource.deceased",
)

RULES: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, str, str, str]]] = {
    "item-identifier-malformed": (
        _change(1, "identifier.0.value", "item 1"),
        ("value", "INVALID_VALUE", ITEM_IDENTIFIER_RULE, "Bundle.entry[1].resource.identifier"),
    ),
    "item-identifier-missing": (
        _change(1, "identifier.0.system", "https://example.org/item"),
        (
            "required",
            "MISSING_FIELD",
            f"A line item identifier (system {ITEM_SYSTEM}) is required",
            "Bundle.entry[1].resource.identifier",
        ),
    ),
    "item-identifier-repeated": (
        _repeat_first_item_identifier,
        (
            "duplicate",
            "INVALID_VALUE",
            "Line item identifier is used twice in this prescription (first at Bundle.entry[1].resource)",
            "Bundle.entry[2].resource.identifier",
        ),
    ),
    "no-dosage-instruction": (
        _change(1, "dosageInstruction", _DROP),
        (
            "required",
            "MISSING_FIELD",
            "MedicationRequest.dosageInstruction is required",
            "Bundle.entry[1].resource.dosageInstruction",
        ),
    ),
    "no-group-identifier": (
        _change(1, "groupIdentifier", _DROP),
        (
            "required",
            "MISSING_FIELD",
            "MedicationRequest.groupIdentifier (the prescription ID) is required",
            "Bundle.entry[1].resource.groupIdentifier",
        ),
    ),
    "no-short-form": (
        _change(1, "groupIdentifier.value", _DROP),
        (
            "required",
            "MISSING_FIELD",
            "The short-form prescription ID is required",
            "Bundle.entry[1].resource.groupIdentifier.value",
        ),
    ),
    "group-identifier-system": (
        _change(1, "groupIdentifier.system", "https://example.org/prescriptions"),
        (
            "value",
            "INVALID_VALUE",
            "groupIdentifier.system must be https://fhir.nhs.uk/Id/prescription-order-number",
            "Bundle.entry[1].resource.groupIdentifier.system",
        ),
    ),
    "short-form-malformed": (
        _change(1, "groupIdentifier.value", "A0548B-A99968"),
        (
            "value",
            "INVALID_VALUE",
            "The prescription ID must have the form XXXXXX-XXXXXX-XXXXXC",
            "Bundle.entry[1].resource.groupIdentifier.value",
        ),
    ),
    "long-form-not-uuid": (
        _change(1, "groupIdentifier.extension.0.valueIdentifier.value", "not-a-uuid"),
        (
            "value",
            "INVALID_VALUE",
            "The long-form prescription ID must be a UUID in https://fhir.nhs.uk/Id/prescription",
            f"{LONG_FORM}.valueIdentifier",
        ),
    ),
    "long-form-system": (
        _change(1, "groupIdentifier.extension.0.valueIdentifier.system", "https://example.org/ids"),
        (
            "value",
            "INVALID_VALUE",
            "The long-form prescription ID must be a UUID in https://fhir.nhs.uk/Id/prescription",
            f"{LONG_FORM}.valueIdentifier",
        ),
    ),
    "no-long-form": (
        _change(1, "groupIdentifier.extension", _DROP),
        ("required", "MISSING_FIELD", "The long-form prescription ID (a UUID) is required", LONG_FORM),
    ),
    "no-prescription-type": (
        _change(1, "extension", _DROP),
        ("required", "MISSING_FIELD", "The prescription type extension is required", TYPE_EXTENSION),
    ),
    "prescription-type-system": (
        _change(1, "extension.0.valueCoding.system", "https://example.org/types"),
        (
            "value",
            "INVALID_VALUE",
            "The prescription type must come from https://fhir.nhs.uk/CodeSystem/prescription-type",
            f"{TYPE_EXTENSION}.valueCoding.system",
        ),
    ),
    "no-performer": (
        _change(1, "dispenseRequest.performer", _DROP),
        (
            "required",
            "MISSING_FIELD",
            "dispenseRequest.performer (the homecare provider's ODS code) is required",
            "Bundle.entry[1].resource.dispenseRequest.performer.identifier",
        ),
    ),
    "subject-not-the-patient": (
        _both_subjects_name_the_practitioner_role,
        (
            "value",
            "INVALID_VALUE",
            "MedicationRequest.subject must reference the Patient",
            "Bundle.entry[1].resource.subject",
        ),
    ),
    "no-nhs-number": (
        _change(3, "identifier.0.system", "https://example.org/hospital-number"),
        (
            "required",
            "MISSING_FIELD",
            "The patient's NHS number (system https://fhir.nhs.uk/Id/nhs-number) is required",
            "Bundle.entry[3].resource.identifier",
        ),
    ),
    "nhs-number-not-ten-digits": (
        _change(3, "identifier.0.value", "974852605"),
        (
            "value",
            "INVALID_VALUE",
            "An NHS number is 10 digits",
            "Bundle.entry[3].resource.identifier[0].value",
        ),
    ),
    "nhs-number-check-digit": (
        _change(3, "identifier.0.value", "9748526055"),
        (
            "value",
            "INVALID_CHECK_DIGIT",
            "The NHS number fails its Modulus 11 check",
            "Bundle.entry[3].resource.identifier[0].value",
        ),
    ),
    "deceased-boolean": (_change(3, "deceasedBoolean", True), DECEASED),
    "deceased-date-time": (_change(3, "deceasedDateTime", "2026-11-01T08:00:00+00:00"), DECEASED),
    "performer-not-ods": (
        _change(1, "dispenseRequest.performer.identifier.system", "https://example.org/ods"),
        ("value", "INVALID_VALUE", ODS_RULE, "Bundle.entry[1].resource.dispenseRequest.performer.identifier"),
    ),
    "performer-bad-ods": (
        _change(1, "dispenseRequest.performer.identifier.value", "V NCEL"),
        ("value", "INVALID_VALUE", ODS_RULE, "Bundle.entry[1].resource.dispenseRequest.performer.identifier"),
    ),
    "no-requester": (
        _change(1, "requester", _DROP),
        (
            "required",
            "MISSING_FIELD",
            "MedicationRequest.requester is required",
            "Bundle.entry[1].resource.requester",
        ),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_broken_rule_of_one_item_is_one_located_issue_that_says_what_is_wrong(rule: str) -> None:
    change, issue = RULES[rule]
    message = PrescriptionMessageBuilder(seed=12).build(items=2)
    change(message)
    assert _issues(message) == [issue]
    assert validate_message(message).order is None


def test_eps_words_its_intent_and_checksum_refusals_so() -> None:
    """The diagnostics EPS documents for a wrong intent and a wrong check character
    (errors 4 and 1 of its examples), given for each item."""
    message = PrescriptionMessageBuilder(seed=13).build(items=2)
    intent = "MedicationRequest.intent must be order, original-order or instance-order."
    assert _issues(break_message(message, "intent-plan")) == [
        ("value", "INVALID_VALUE", intent, f"Bundle.entry[{index}].resource.intent") for index in (1, 2)
    ]
    checksum = (
        "Unable to process message. Information missing or invalid - prescriptionID has invalid checksum"
    )
    assert _issues(break_message(message, "bad-prescription-check-character")) == [
        (
            "processing",
            "FAILURE_TO_PROCESS_MESSAGE",
            checksum,
            f"Bundle.entry[{index}].resource.groupIdentifier.value",
        )
        for index in (1, 2)
    ]


def test_codes_of_the_wrong_json_type_are_reported_once_where_they_are() -> None:
    """A list or an object where a code belongs (Bundle.type, a MedicationRequest's status and intent)
    is one structural issue at its place: the rules that read those codes do not trip over it."""
    message = PrescriptionMessageBuilder(seed=14).build(items=1)
    message["type"] = ["message"]
    message["entry"][1]["resource"]["status"] = ["active"]
    message["entry"][1]["resource"]["intent"] = {"code": "order"}
    assert [(detail, expression) for _, detail, _, expression in _issues(message)] == [
        ("INVALID_VALUE", "Bundle.type"),
        ("INVALID_VALUE", "Bundle.entry[1].resource.status"),
        ("INVALID_VALUE", "Bundle.entry[1].resource.intent"),
    ]


# --- course of therapy, references, shared values ----------------------------------------------------

THERAPY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"
MIXED_THERAPY = (
    "invalid",
    "INVALID_VALUE",
    "Course of therapy type must either match for all MedicationRequests or be a mixture of "
    "'acute' and 'continuous'.",
    "MedicationRequest.courseOfTherapyType.coding",
)


@pytest.mark.parametrize(
    ("kinds", "allowed"),
    [
        (("acute", "acute"), True),
        (("acute", "continuous"), True),
        (("acute", None), True),
        (("continuous", "continuous-repeat-dispensing"), False),
        (("acute", "continuous-repeat-dispensing"), False),
        (("acute", "continuous", "continuous-repeat-dispensing"), False),
    ],
)
def test_courses_of_therapy_match_or_mix_acute_and_continuous_as_eps_requires(
    kinds: tuple[str | None, ...], allowed: bool
) -> None:
    """EPS error example 2: a mixture other than acute with continuous is refused, with EPS's words.
    A coding without a code names no course."""
    message = PrescriptionMessageBuilder(seed=41).build(items=len(kinds))
    for request, kind in zip(_requests(message), kinds, strict=True):
        coding = (
            {"system": THERAPY_SYSTEM, "code": kind} if kind else {"system": THERAPY_SYSTEM, "display": "?"}
        )
        request["courseOfTherapyType"] = {"coding": [coding]}
    assert _issues(message) == ([] if allowed else [MIXED_THERAPY])


def test_a_practitioner_role_every_item_names_is_reported_once_when_its_practitioner_is_missing() -> None:
    message = PrescriptionMessageBuilder(seed=42).build(items=3)
    role = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "PractitionerRole"
    )
    role["practitioner"] = {"reference": f"urn:uuid:{uuid.uuid4()}"}
    assert _issues(message) == [
        (
            "value",
            "INVALID_VALUE",
            "Reference does not resolve to any entry of the Bundle (references resolve by fullUrl)",
            "Bundle.entry[5].resource.practitioner.reference",
        )
    ]


@pytest.mark.parametrize(
    ("reference", "local"),
    [
        ("urn:uuid:6f1e6c1c-8f0b-4a55-9d3e-3c2b1a0f9e8d", True),
        ("urn:oid:1.2.826.0.1285.0.2.0.65", True),
        ("PractitionerRole/not-in-this-bundle", True),
        ("https://example.org/fhir/PractitionerRole/1", False),
        ("http:PractitionerRole/1", False),
        ("https:PractitionerRole/1", False),
        ("#PractitionerRole/1", False),
    ],
)
def test_only_a_local_reference_the_gateway_follows_must_resolve_inside_the_bundle(
    reference: str, local: bool
) -> None:
    """A urn or a Type/id reference names an entry of the Bundle; one with a scheme or a fragment does not."""
    message = PrescriptionMessageBuilder(seed=43).build(items=1)
    message["entry"][1]["resource"]["requester"] = {"reference": reference}
    dangling = (
        "value",
        "INVALID_VALUE",
        "Reference does not resolve to any entry of the Bundle (references resolve by fullUrl)",
        "Bundle.entry[1].resource.requester.reference",
    )
    assert _issues(message) == ([dangling] if local else [])


def test_a_type_and_id_reference_resolves_to_the_entry_of_that_type_and_id() -> None:
    message = PrescriptionMessageBuilder(seed=44).build(items=2)
    patient, role = (message["entry"][index]["resource"] for index in (3, 4))
    second = _requests(message)[1]
    second["subject"] = {"reference": f"Patient/{patient['id']}"}
    second["requester"] = {"reference": f"PractitionerRole/{role['id']}"}
    result = validate_message(message)
    assert result.issues == [] and result.order is not None
    assert result.order.nhs_number == patient["identifier"][0]["value"]
    del patient["id"]
    second["subject"] = {"reference": "Patient/None"}
    assert ("INVALID_VALUE", "Bundle.entry[2].resource.subject.reference") in [
        (detail, expression) for _, detail, _, expression in _issues(message)
    ]


def _shared(name: str, first: str) -> tuple[str, str, str, str]:
    return (
        "value",
        "INVALID_VALUE",
        f"Every line item must have the same {name} (it differs from {first})",
        f"Bundle.entry[2].resource.{name}",
    )


def _copy_entry(message: dict[str, Any], index: int) -> str:
    """An exact copy of entry `index` under another fullUrl, appended; its fullUrl."""
    copied = copy.deepcopy(message["entry"][index])
    copied["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
    message["entry"].append(copied)
    return str(copied["fullUrl"])


def test_every_item_names_the_same_patient_requester_category_intent_and_status() -> None:
    builder = PrescriptionMessageBuilder(seed=45)
    first = "Bundle.entry[1].resource"

    message = builder.build(items=2)
    _requests(message)[1]["subject"] = {"reference": _copy_entry(message, 3)}
    assert _issues(message) == [_shared("subject", first)], "a copy of the patient is another patient"

    message = builder.build(items=2)
    _requests(message)[1]["requester"] = {"reference": _copy_entry(message, 4)}
    assert _issues(message) == [_shared("requester", first)], "a copy of the role is another requester"

    message = builder.build(items=2)
    for position, request in enumerate(_requests(message)):
        request["requester"] = {"reference": f"https://example.org/fhir/PractitionerRole/{position}"}
    assert _issues(message) == [_shared("requester", first)]

    message = builder.build(items=2)
    _requests(message)[1]["category"][0]["coding"][0]["code"] = "community"
    assert _issues(message) == [_shared("category", first)]

    message = builder.build(items=2)
    _requests(message)[1]["intent"] = "original-order"
    assert _issues(message) == [_shared("intent", first)]

    message = builder.build(items=2)
    _requests(message)[1]["status"] = "on-hold"
    assert _issues(message) == [
        (
            "value",
            "INVALID_VALUE",
            "MedicationRequest.status must be 'active' in a prescription order, not 'on-hold'",
            "Bundle.entry[2].resource.status",
        ),
        _shared("status", first),
    ]


def test_a_valid_order_is_read_into_the_typed_order_the_gateway_stores() -> None:
    message = PrescriptionMessageBuilder(seed=46).build(items=2)
    requests = _requests(message)
    long_form = requests[0]["groupIdentifier"]["extension"][0]["valueIdentifier"]["value"]
    for request in requests:
        request["groupIdentifier"]["extension"][0]["valueIdentifier"]["value"] = long_form.upper()
        request["dispenseRequest"]["validityPeriod"] = {"start": "2026-11-20", "end": "2027-02-20"}
    order = validate_message(message).order
    assert order is not None
    assert (
        order.bundle_identifier,
        order.short_form_id,
        order.long_form_id,
        order.nhs_number,
        order.prescription_type,
        order.patient_deceased,
        order.valid_until,
    ) == (
        message["identifier"]["value"],
        requests[0]["groupIdentifier"]["value"],
        long_form.lower(),
        message["entry"][3]["resource"]["identifier"][0]["value"],
        "1201",
        False,
        "2027-02-20",
    )
    assert [(item.entry_index, item.item_identifier, item.resource) for item in order.items] == [
        (1, _item_id(requests[0]), requests[0]),
        (2, _item_id(requests[1]), requests[1]),
    ]


def test_a_prescription_order_needs_a_medication_request_and_names_a_wrong_type_in_brief() -> None:
    message = PrescriptionMessageBuilder(seed=47).build(items=1)
    message["entry"][1]["resource"]["extension"][0]["valueCoding"]["code"] = "0101-not-homecare-at-all"
    assert _issues(message) == [
        (
            "business-rule",
            "NOT_HOMECARE_PRESCRIPTION",
            "This gateway takes homecare prescriptions only (prescription type 12xx); "
            "type '0101-not-homecar' is not a homecare prescription type",
            f"{TYPE_EXTENSION}.valueCoding.code",
        )
    ]
    message = break_message(message, "no-medication-request")
    assert (
        "required",
        "MISSING_FIELD",
        "At least one MedicationRequest is required",
        "Bundle.entry",
    ) in _issues(message)


@pytest.mark.parametrize(
    ("document", "envelope"),
    [
        (["not", "a", "bundle"], MessageEnvelope(None, None, None)),
        ({"resourceType": "Bundle", "type": "message", "entry": []}, MessageEnvelope(None, None, None)),
        (
            {
                "resourceType": "Bundle",
                "identifier": {"value": 42},
                "type": "message",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "MessageHeader",
                            "eventCoding": {
                                "system": codes.MESSAGE_EVENT_SYSTEM,
                                "code": ["prescription-order"],
                            },
                            "sender": {"identifier": {"system": ODS_SYSTEM, "value": ""}},
                        }
                    }
                ],
            },
            MessageEnvelope(None, None, None),
        ),
        (
            {
                "resourceType": "Bundle",
                "identifier": {"value": "b-1"},
                "entry": [
                    {
                        "resource": {
                            "resourceType": "MessageHeader",
                            "eventCoding": {"code": "dispense-notification"},
                            "sender": {"identifier": {"system": ODS_SYSTEM, "value": "VNCEL"}},
                        }
                    }
                ],
            },
            MessageEnvelope("b-1", "dispense-notification", "VNCEL"),
        ),
        (
            {
                "resourceType": "Bundle",
                "identifier": {"value": "b-2"},
                "entry": [
                    {
                        "resource": {
                            "resourceType": "MessageHeader",
                            "eventCoding": {"code": "dispense-notification"},
                            "sender": {
                                "identifier": {"system": "https://example.org/orgs", "value": "VNCEL"}
                            },
                        }
                    }
                ],
            },
            MessageEnvelope("b-2", "dispense-notification", None),
        ),
    ],
)
def test_the_envelope_is_read_defensively_strings_or_nothing(
    document: Any, envelope: MessageEnvelope
) -> None:
    """What routes and keys a message (identifier, event, sender) is a non-empty string or None, whatever
    the body holds, and the sender is an ODS code or None; the body's problems are the issues."""
    result = validate_message(document)
    assert result.envelope == envelope
    assert result.issues


# --- the rules every message shares: Bundle and MessageHeader --------------------------------------


def _move_patient_first(message: dict[str, Any]) -> None:
    message["entry"].insert(0, message["entry"].pop(2))


def _event_code(code: str) -> Callable[[dict[str, Any]], None]:
    def change(message: dict[str, Any]) -> None:
        message["entry"][0]["resource"]["eventCoding"]["code"] = code

    return change


def _no_entries(message: dict[str, Any]) -> None:
    message["entry"] = []


HEADER = "Bundle.entry[0].resource"
MESSAGE_RULES: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, str, str, str]]] = {
    "header-not-first": (
        _move_patient_first,
        (
            "structure",
            "INVALID_VALUE",
            "The first entry of a message Bundle must be its MessageHeader",
            HEADER,
        ),
    ),
    "no-event-code": (
        _change(0, "eventCoding.code", _DROP),
        (
            "required",
            "MISSING_FIELD",
            "MessageHeader.eventCoding.code is required",
            f"{HEADER}.eventCoding.code",
        ),
    ),
    "event-system": (
        _change(0, "eventCoding.system", "https://example.org/events"),
        (
            "value",
            "INVALID_VALUE",
            f"MessageHeader.eventCoding.system must be {codes.MESSAGE_EVENT_SYSTEM}",
            f"{HEADER}.eventCoding.system",
        ),
    ),
    "event-unknown-and-long": (
        _event_code("x" * 70),
        (
            "value",
            "INVALID_VALUE",
            f"'{'x' * 64}' is not a message event this gateway knows",
            f"{HEADER}.eventCoding.code",
        ),
    ),
    "event-the-gateway-does-not-receive": (
        _event_code(codes.EVENT_PRESCRIPTION_ORDER_RESPONSE),
        (
            "not-supported",
            "UNSUPPORTED_MESSAGE_EVENT",
            "Message event 'prescription-order-response' is not one a homecare gateway receives; send "
            "prescription-order, prescription-order-update or dispense-notification",
            f"{HEADER}.eventCoding.code",
        ),
    ),
    "no-sender": (
        lambda message: BREAKAGES["no-sender"](message),
        (
            "required",
            "MISSING_FIELD",
            "MessageHeader.sender.identifier (the sending trust's ODS code) is required",
            f"{HEADER}.sender.identifier.value",
        ),
    ),
    "sender-not-ods": (
        lambda message: BREAKAGES["sender-not-ods"](message),
        (
            "value",
            "INVALID_VALUE",
            f"The sender must be identified by an ODS code ({ODS_SYSTEM})",
            f"{HEADER}.sender.identifier.system",
        ),
    ),
    "sender-bad-ods": (
        _change(0, "sender.identifier.value", "R B A"),
        (
            "value",
            "INVALID_VALUE",
            "The sender's ODS code is not a valid ODS code",
            f"{HEADER}.sender.identifier.value",
        ),
    ),
    "bundle-type-collection": (
        lambda message: BREAKAGES["bundle-type-collection"](message),
        ("value", "INVALID_VALUE", "Bundle.type must be 'message', not 'collection'", "Bundle.type"),
    ),
    "no-bundle-identifier": (
        lambda message: BREAKAGES["no-bundle-identifier"](message),
        (
            "required",
            "MISSING_FIELD",
            "Bundle.identifier (the message's unique identifier) is required",
            "Bundle.identifier.value",
        ),
    ),
    "no-entries": (
        _no_entries,
        ("value", "MISSING_FIELD", "ResourceType Bundle must contain 'entry' field", "Bundle.entry"),
    ),
}


@pytest.mark.parametrize("rule", sorted(MESSAGE_RULES))
def test_a_broken_rule_every_message_shares_is_one_located_issue(rule: str) -> None:
    change, issue = MESSAGE_RULES[rule]
    message = PrescriptionMessageBuilder(seed=51).build(items=1)
    change(message)
    result = validate_message(message)
    assert _issues(message) == [issue]
    assert (result.order, result.cancellation, result.dispense) == (None, None, None)


def test_a_cancellation_or_dispense_notification_with_only_a_structural_problem_is_not_taken_up() -> None:
    order = PrescriptionMessageBuilder(seed=52).build(items=1)
    cancel = build_cancellation(order)
    notification = dispense_notification(order)
    assert validate_message(cancel).cancellation is not None
    assert validate_message(notification).dispense is not None
    cancel["entry"][1]["resource"]["dispenseRequest"]["quantity"]["value"] = "two"
    notification["entry"][1]["resource"]["whenHandedOver"] = "yesterday"
    for message, expression in (
        (cancel, "Bundle.entry[1].resource.dispenseRequest.quantity.value"),
        (notification, "Bundle.entry[1].resource.whenHandedOver"),
    ):
        result = validate_message(message)
        assert [issue.expression for issue in result.issues] == [expression]
        assert (result.order, result.cancellation, result.dispense) == (None, None, None)


@pytest.mark.parametrize(
    ("end", "moment"),
    [
        (None, None),
        ("2027-02-20", datetime(2027, 2, 20, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2028-02", datetime(2028, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2027-11", datetime(2027, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2027", datetime(2027, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2027-02-20T10:30:00+01:00", datetime(2027, 2, 20, 9, 30, tzinfo=UTC)),
        ("2027-02-20T10:30:00Z", datetime(2027, 2, 20, 10, 30, tzinfo=UTC)),
    ],
)
def test_a_validity_period_ends_at_the_end_of_its_last_day_in_utc(
    end: str | None, moment: datetime | None
) -> None:
    """`dispenseRequest.validityPeriod.end` as FHIR allows it (a year, a month, a date or a dateTime): a
    date without a time means the whole of that day, month or year (UTC)."""
    valid_until = end_of_validity(end)
    assert valid_until == moment
    assert valid_until is None or valid_until.utcoffset() == timedelta(0)
