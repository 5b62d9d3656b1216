"""A builder of EPS-shaped homecare prescription messages, valid or deliberately broken.

Tests, benchmarks, examples, the demo and the provider simulators use it. Everything it makes is
synthetic: test-range NHS numbers (starting 9), made-up names, generated prescription IDs.

    order = PrescriptionMessageBuilder(seed=1).build(items=2)
    broken = break_message(order, "bad-nhs-check-digit")
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhir_profiles import codes
from fhir_profiles.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_LONG_FORM_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
    generate_nhs_number,
    generate_short_form_id,
)

Message = dict[str, Any]

_MEDICINES = [
    (
        "39111311000001105",
        "Adalimumab 40mg/0.4ml solution for injection pre-filled pens",
        "pre-filled disposable injection",
        "3318611000001103",
    ),
    (
        "34917411000001102",
        "Etanercept 50mg/1ml solution for injection pre-filled pens",
        "pre-filled disposable injection",
        "3318611000001103",
    ),
    (
        "37434711000001100",
        "Ustekinumab 90mg/1ml solution for injection pre-filled syringes",
        "pre-filled disposable injection",
        "3318611000001103",
    ),
    (
        "40832311000001102",
        "Ivacaftor 150mg / Tezacaftor 100mg / Elexacaftor 75mg tablets",
        "tablet",
        "428673006",
    ),
    ("13892511000001100", "Amlodipine 5mg/5ml oral solution", "ml", "385024007"),
]
_FAMILY_NAMES = ["TESTER", "EXAMPLE", "SAMPLE", "DEMO", "SPECIMEN", "PLACEHOLDER"]
_GIVEN_NAMES = ["ALEX", "SAM", "JO", "CHRIS", "ROBIN", "TAYLOR"]


@dataclass
class PrescriptionMessageBuilder:
    """Makes valid homecare prescription-order messages; each call gets fresh identifiers."""

    seed: int | None = None
    sender_ods: str = "RBA"
    prescriber_site_ods: str = "A99968"
    performer_ods: str = "VNCEL"
    prescription_type: str = "1201"
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def build(
        self,
        *,
        items: int = 2,
        nhs_number: str | None = None,
        short_form_id: str | None = None,
        performer_ods: str | None = None,
        sender_ods: str | None = None,
        prescription_type: str | None = None,
    ) -> Message:
        sender = sender_ods or self.sender_ods
        performer = performer_ods or self.performer_ods
        kind = prescription_type or self.prescription_type
        nhs = nhs_number or generate_nhs_number(self.rng)
        short_form = short_form_id or generate_short_form_id(self.prescriber_site_ods, self.rng)
        long_form = self._uuid()
        header_url, patient_url, role_url, practitioner_url, org_url, provenance_url = (
            f"urn:uuid:{self._uuid()}" for _ in range(6)
        )
        request_urls = [f"urn:uuid:{self._uuid()}" for _ in range(items)]

        requests = [
            self._medication_request(
                url=url,
                position=position,
                short_form=short_form,
                long_form=long_form,
                patient_url=patient_url,
                role_url=role_url,
                performer=performer,
                kind=kind,
            )
            for position, url in enumerate(request_urls)
        ]
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": header_url,
                "resource": self._header(header_url, sender, [patient_url, *request_urls]),
            },
            *(
                {"fullUrl": url, "resource": request}
                for url, request in zip(request_urls, requests, strict=True)
            ),
            {"fullUrl": patient_url, "resource": self._patient(patient_url, nhs)},
            {"fullUrl": role_url, "resource": self._practitioner_role(role_url, practitioner_url, org_url)},
            {"fullUrl": practitioner_url, "resource": self._practitioner(practitioner_url)},
            {"fullUrl": org_url, "resource": self._organization(org_url, sender)},
            {"fullUrl": provenance_url, "resource": self._provenance(provenance_url, request_urls, role_url)},
        ]
        return {
            "resourceType": "Bundle",
            "id": header_url.removeprefix("urn:uuid:"),
            "identifier": {"system": "https://tools.ietf.org/html/rfc4122", "value": self._uuid()},
            "type": "message",
            "entry": entries,
        }

    def _header(self, url: str, sender: str, focus: list[str]) -> dict[str, Any]:
        return {
            "resourceType": "MessageHeader",
            "id": url.removeprefix("urn:uuid:"),
            "eventCoding": {
                "system": codes.MESSAGE_EVENT_SYSTEM,
                "code": codes.EVENT_PRESCRIPTION_ORDER,
                "display": "Prescription Order",
            },
            "sender": {"identifier": {"system": ODS_SYSTEM, "value": sender}, "display": "Demo NHS Trust"},
            "source": {"endpoint": f"https://directory.spineservices.nhs.uk/STU3/Organization/{sender}"},
            "focus": [{"reference": reference} for reference in focus],
        }

    def _medication_request(
        self,
        *,
        url: str,
        position: int,
        short_form: str,
        long_form: str,
        patient_url: str,
        role_url: str,
        performer: str,
        kind: str,
    ) -> dict[str, Any]:
        """One EPS homecare MedicationRequest, written out whole: long because it is a template of the
        resource, read top to bottom like the JSON it makes."""
        code, display, unit, unit_code = _MEDICINES[
            (position + self.rng.randrange(len(_MEDICINES))) % len(_MEDICINES)
        ]
        return {
            "resourceType": "MedicationRequest",
            "id": url.removeprefix("urn:uuid:"),
            "extension": [
                {
                    "url": codes.PRESCRIPTION_TYPE_URL,
                    "valueCoding": {
                        "system": codes.PRESCRIPTION_TYPE_SYSTEM,
                        "code": kind,
                        "display": "Outpatient Homecare Prescriber - Medical Prescriber",
                    },
                }
            ],
            "identifier": [{"system": ORDER_ITEM_NUMBER_SYSTEM, "value": self._uuid()}],
            "status": "active",
            "intent": "order",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                            "code": "outpatient",
                            "display": "Outpatient",
                        }
                    ]
                }
            ],
            "medicationCodeableConcept": {
                "coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]
            },
            "subject": {"reference": patient_url},
            "requester": {"reference": role_url},
            "groupIdentifier": {
                "extension": [
                    {
                        "url": codes.PRESCRIPTION_ID_URL,
                        "valueIdentifier": {"system": PRESCRIPTION_LONG_FORM_SYSTEM, "value": long_form},
                    }
                ],
                "system": PRESCRIPTION_ORDER_NUMBER_SYSTEM,
                "value": short_form,
            },
            "courseOfTherapyType": {
                "coding": [
                    {
                        "system": codes.COURSE_OF_THERAPY_SYSTEM,
                        "code": "acute",
                        "display": "Short course (acute) therapy",
                    }
                ]
            },
            "dosageInstruction": [
                {
                    "text": "Inject one dose every two weeks",
                    "timing": {"repeat": {"frequency": 1, "period": 2, "periodUnit": "wk"}},
                    "route": {
                        "coding": [
                            {
                                "system": "http://snomed.info/sct",
                                "code": "34206005",
                                "display": "Subcutaneous route",
                            }
                        ]
                    },
                }
            ],
            "dispenseRequest": {
                "performer": {"identifier": {"system": ODS_SYSTEM, "value": performer}},
                "quantity": {"value": 2, "unit": unit, "system": "http://snomed.info/sct", "code": unit_code},
            },
            "substitution": {"allowedBoolean": False},
        }

    def _patient(self, url: str, nhs_number: str) -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": url.removeprefix("urn:uuid:"),
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs_number}],
            "name": [
                {
                    "use": "usual",
                    "family": self.rng.choice(_FAMILY_NAMES),
                    "given": [self.rng.choice(_GIVEN_NAMES)],
                    "prefix": ["MX"],
                }
            ],
            "gender": self.rng.choice(["male", "female", "other", "unknown"]),
            "birthDate": f"19{self.rng.randrange(40, 99)}-0{self.rng.randrange(1, 9)}-"
            f"{self.rng.randrange(10, 28)}",
            "address": [{"use": "home", "line": ["1 EXAMPLE STREET", "TESTTOWN"], "postalCode": "ZZ99 3AZ"}],
        }

    def _practitioner_role(self, url: str, practitioner_url: str, org_url: str) -> dict[str, Any]:
        return {
            "resourceType": "PractitionerRole",
            "id": url.removeprefix("urn:uuid:"),
            "identifier": [{"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "100102238986"}],
            "practitioner": {"reference": practitioner_url},
            "organization": {"reference": org_url},
            "code": [
                {
                    "coding": [
                        {
                            "system": "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode",
                            "code": "S8000:G8000:R8000",
                            "display": "Clinical Practitioner Access Role",
                        }
                    ]
                }
            ],
            "telecom": [{"system": "phone", "value": "01234567890", "use": "work"}],
        }

    def _practitioner(self, url: str) -> dict[str, Any]:
        return {
            "resourceType": "Practitioner",
            "id": url.removeprefix("urn:uuid:"),
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "7020134158"},
                {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "G9999999"},
            ],
            "name": [{"family": "PRESCRIBER", "given": ["DEMO"], "prefix": ["DR"]}],
        }

    def _organization(self, url: str, trust: str) -> dict[str, Any]:
        return {
            "resourceType": "Organization",
            "id": url.removeprefix("urn:uuid:"),
            "identifier": [{"system": ODS_SYSTEM, "value": self.prescriber_site_ods}],
            "name": "DEMO HOSPITAL OUTPATIENT PHARMACY",
            "telecom": [{"system": "phone", "value": "01234 567890", "use": "work"}],
            "partOf": {"identifier": {"system": ODS_SYSTEM, "value": trust}, "display": "DEMO NHS TRUST"},
        }

    def _provenance(self, url: str, targets: list[str], role_url: str) -> dict[str, Any]:
        return {
            "resourceType": "Provenance",
            "id": url.removeprefix("urn:uuid:"),
            "target": [{"reference": target} for target in targets],
            "recorded": "2026-11-23T09:00:00+00:00",
            "agent": [{"who": {"reference": role_url}}],
            "signature": [
                {
                    "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
                    "when": "2026-11-23T09:00:00+00:00",
                    "who": {"reference": role_url},
                    "data": "RXhhbXBsZSBzaWduYXR1cmUgKG5vdCBhIHJlYWwgc2lnbmF0dXJlKQ==",
                }
            ],
        }


def build_cancellation(
    order: Message,
    *,
    item_positions: list[int] | None = None,
    reason: tuple[str, str] = ("0001", "Prescribing Error"),
    rng: random.Random | None = None,
) -> Message:
    """The trust's prescription-order-update cancelling some (default: all) items of `order`."""
    source = rng or random.Random()
    cancel = copy.deepcopy(order)
    cancel["identifier"] = {
        "system": "https://tools.ietf.org/html/rfc4122",
        "value": str(uuid.UUID(int=source.getrandbits(128), version=4)),
    }
    header = cancel["entry"][0]["resource"]
    header["eventCoding"] = {
        "system": codes.MESSAGE_EVENT_SYSTEM,
        "code": codes.EVENT_PRESCRIPTION_ORDER_UPDATE,
        "display": "Prescription Order Update",
    }
    requests = [e for e in cancel["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    keep = set(range(len(requests))) if item_positions is None else set(item_positions)
    dropped = {id(entry) for position, entry in enumerate(requests) if position not in keep}
    cancel["entry"] = [
        entry
        for entry in cancel["entry"]
        if id(entry) not in dropped and entry["resource"]["resourceType"] != "Provenance"
    ]
    kept_urls = {entry.get("fullUrl") for entry in cancel["entry"]}
    header["focus"] = [focus for focus in header.get("focus", []) if focus.get("reference") in kept_urls]
    for entry in cancel["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            resource["status"] = "cancelled"
            resource["statusReason"] = {
                "coding": [
                    {
                        "system": "https://fhir.nhs.uk/CodeSystem/medicationrequest-status-reason",
                        "code": reason[0],
                        "display": reason[1],
                    }
                ]
            }
    return cancel


# --- Deliberately broken messages --------------------------------------------------------------


def _requests(message: Message) -> list[dict[str, Any]]:
    return [e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]


def _patient(message: Message) -> dict[str, Any]:
    return next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")


def _header(message: Message) -> dict[str, Any]:
    resource: dict[str, Any] = message["entry"][0]["resource"]
    return resource


def _bad_nhs_check_digit(message: Message) -> None:
    identifier = _patient(message)["identifier"][0]
    value = identifier["value"]
    identifier["value"] = value[:9] + str((int(value[9]) + 1) % 10)


def _bad_prescription_check_character(message: Message) -> None:
    for request in _requests(message):
        value = request["groupIdentifier"]["value"]
        request["groupIdentifier"]["value"] = value[:-1] + ("A" if value[-1] != "A" else "B")


def _set_all(element: str, value: Any) -> Callable[[Message], None]:
    def mutate(message: Message) -> None:
        for request in _requests(message):
            request[element] = value

    return mutate


def _drop_all(element: str) -> Callable[[Message], None]:
    def mutate(message: Message) -> None:
        for request in _requests(message):
            request.pop(element, None)

    return mutate


def _community_type(message: Message) -> None:
    for request in _requests(message):
        request["extension"][0]["valueCoding"]["code"] = "1001"


def _too_many_items(message: Message) -> None:
    template = _requests(message)[0]
    for _ in range(5 - len(_requests(message))):
        clone = copy.deepcopy(template)
        clone["identifier"][0]["value"] = str(uuid.uuid4())
        clone_url = f"urn:uuid:{uuid.uuid4()}"
        clone["id"] = clone_url.removeprefix("urn:uuid:")
        message["entry"].insert(1, {"fullUrl": clone_url, "resource": clone})


def _no_medication_request(message: Message) -> None:
    message["entry"] = [e for e in message["entry"] if e["resource"]["resourceType"] != "MedicationRequest"]


def _mismatched_group_identifier(message: Message) -> None:
    requests = _requests(message)
    if len(requests) < 2:
        raise ValueError("needs a message with at least two items")
    requests[1]["groupIdentifier"]["value"] = generate_short_form_id("A99968", random.Random(7))


def _mismatched_performer(message: Message) -> None:
    requests = _requests(message)
    if len(requests) < 2:
        raise ValueError("needs a message with at least two items")
    requests[1]["dispenseRequest"]["performer"]["identifier"]["value"] = "OTHER1"


def _duplicate_item_identifier(message: Message) -> None:
    requests = _requests(message)
    if len(requests) < 2:
        raise ValueError("needs a message with at least two items")
    requests[1]["identifier"][0]["value"] = requests[0]["identifier"][0]["value"]


def _both_medications(message: Message) -> None:
    _requests(message)[0]["medicationReference"] = {"reference": message["entry"][0]["fullUrl"]}


def _dangling_subject(message: Message) -> None:
    for request in _requests(message):
        request["subject"] = {"reference": f"urn:uuid:{uuid.uuid4()}"}


def _missing_long_form(message: Message) -> None:
    for request in _requests(message):
        request["groupIdentifier"].pop("extension")


def _missing_sender(message: Message) -> None:
    _header(message).pop("sender")


def _unknown_resource_type(message: Message) -> None:
    message["entry"].append(
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Prescription"}}
    )


def _missing_resource_type(message: Message) -> None:
    _patient(message).pop("resourceType")


def _wrong_json_type(message: Message) -> None:
    _requests(message)[0]["dispenseRequest"]["quantity"]["value"] = "two"


def _deceased_patient(message: Message) -> None:
    _patient(message)["deceasedBoolean"] = True


def _bundle_type(value: str) -> Callable[[Message], None]:
    def mutate(message: Message) -> None:
        message["type"] = value

    return mutate


def _event(code: str) -> Callable[[Message], None]:
    def mutate(message: Message) -> None:
        _header(message)["eventCoding"]["code"] = code

    return mutate


def _missing_bundle_identifier(message: Message) -> None:
    message.pop("identifier")


def _unknown_performer(message: Message) -> None:
    for request in _requests(message):
        request["dispenseRequest"]["performer"]["identifier"]["value"] = "ZZZ99"


def _missing_performer(message: Message) -> None:
    for request in _requests(message):
        request["dispenseRequest"].pop("performer")


def _bad_ods_system(message: Message) -> None:
    _header(message)["sender"]["identifier"]["system"] = "https://example.org/not-ods"


def _mismatched_authored_on(message: Message) -> None:
    requests = _requests(message)
    if len(requests) < 2:
        raise ValueError("needs a message with at least two items")
    requests[0]["authoredOn"] = "2026-11-20T10:00:00+00:00"
    requests[1]["authoredOn"] = "2026-11-21T10:00:00+00:00"


BREAKAGES: dict[str, Callable[[Message], None]] = {
    "bad-nhs-check-digit": _bad_nhs_check_digit,
    "bad-prescription-check-character": _bad_prescription_check_character,
    "status-bogus": _set_all("status", "bogus"),
    "status-not-active": _set_all("status", "on-hold"),
    "intent-bogus": _set_all("intent", "bogus"),
    "intent-plan": _set_all("intent", "plan"),
    "bundle-type-bogus": _bundle_type("bogus"),
    "bundle-type-collection": _bundle_type("collection"),
    "no-dosage-instruction": _drop_all("dosageInstruction"),
    "no-group-identifier": _drop_all("groupIdentifier"),
    "no-long-form-id": _missing_long_form,
    "community-prescription-type": _community_type,
    "too-many-items": _too_many_items,
    "no-medication-request": _no_medication_request,
    "mismatched-group-identifier": _mismatched_group_identifier,
    "mismatched-performer": _mismatched_performer,
    "mismatched-authored-on": _mismatched_authored_on,
    "duplicate-item-identifier": _duplicate_item_identifier,
    "both-medication-choices": _both_medications,
    "dangling-subject-reference": _dangling_subject,
    "no-sender": _missing_sender,
    "sender-not-ods": _bad_ods_system,
    "unknown-resource-type": _unknown_resource_type,
    "missing-resource-type": _missing_resource_type,
    "wrong-json-type": _wrong_json_type,
    "deceased-patient": _deceased_patient,
    "event-cancel": _event(codes.EVENT_PRESCRIPTION_ORDER_UPDATE),
    "event-unknown": _event("prescription-teleport"),
    "no-bundle-identifier": _missing_bundle_identifier,
    "unknown-performer": _unknown_performer,
    "no-performer": _missing_performer,
}


def break_message(message: Message, breakage: str) -> Message:
    """A copy of `message` with one named fault (see `BREAKAGES`)."""
    broken = copy.deepcopy(message)
    BREAKAGES[breakage](broken)
    return broken
