"""The suite's own EPS-shaped homecare messages: orders, cancellations and status Tasks.

Built from the NHS EPS FHIR API's message shape (a `message` Bundle whose first entry is the
MessageHeader; 1-4 MedicationRequests sharing one groupIdentifier; prescription type 1201), with
synthetic patients only. The suite does not use the gateway's builder: two readings of the contract.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from conformance.identifiers import synthetic_nhs_number, synthetic_short_form_id

MESSAGE_EVENT_SYSTEM = "https://fhir.nhs.uk/CodeSystem/message-event"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PRESCRIPTION_ID_SYSTEM = "https://fhir.nhs.uk/Id/prescription-order-number"
LONG_FORM_SYSTEM = "https://fhir.nhs.uk/Id/prescription"
LONG_FORM_EXTENSION = "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionId"
ITEM_SYSTEM = "https://fhir.nhs.uk/Id/prescription-order-item-number"
PRESCRIPTION_TYPE_EXTENSION = "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionType"
PRESCRIPTION_TYPE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/prescription-type"
STATUS_REASON_SYSTEM = "https://fhir.nhs.uk/CodeSystem/medicationrequest-status-reason"
HOMECARE_STATUS_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status"
SNOMED = "http://snomed.info/sct"

Json = dict[str, Any]

# Synthetic medicines (real dm+d codes, no patient meaning).
MEDICINES = (
    ("39111311000001105", "Adalimumab 40mg/0.4ml solution for injection pre-filled pens"),
    ("13892511000001100", "Amlodipine 5mg/5ml oral solution"),
    ("42230711000001103", "Etanercept 50mg/1ml solution for injection pre-filled pens"),
    ("36034211000001106", "Ustekinumab 45mg/0.5ml solution for injection pre-filled syringes"),
    ("39732311000001104", "Secukinumab 150mg/1ml solution for injection pre-filled pens"),
)


@dataclass
class Message:
    """A message Bundle as a dict, with the facts a check needs kept beside it."""

    bundle: Json
    short_form_id: str = ""
    item_ids: list[str] = field(default_factory=list)
    nhs_number: str = ""
    sender_ods: str = ""
    performer_ods: str = ""

    @property
    def identifier(self) -> str:
        return str(self.bundle["identifier"]["value"])

    def body(self) -> bytes:
        return json.dumps(self.bundle, separators=(",", ":")).encode()

    def copy(self) -> Message:
        return Message(
            copy.deepcopy(self.bundle),
            self.short_form_id,
            list(self.item_ids),
            self.nhs_number,
            self.sender_ods,
            self.performer_ods,
        )

    def entries(self, resource_type: str) -> list[Json]:
        return [e["resource"] for e in self.bundle["entry"] if e["resource"]["resourceType"] == resource_type]

    def entry_index(self, resource_type: str, nth: int = 0) -> int:
        """Position of the nth resource of a type in Bundle.entry (for FHIRPath expressions)."""
        positions = [
            i for i, e in enumerate(self.bundle["entry"]) if e["resource"]["resourceType"] == resource_type
        ]
        return positions[nth]

    def header(self) -> Json:
        resource: Json = self.bundle["entry"][0]["resource"]
        return resource

    def fresh_identifier(self, rng: random.Random) -> None:
        self.bundle["identifier"]["value"] = _uuid(rng)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _coding(system: str, code: str, display: str) -> Json:
    return {"system": system, "code": code, "display": display}


class MessageBuilder:
    """Synthetic prescription messages for one sending trust. Seeded: a run repeats itself."""

    def __init__(self, sender_ods: str, *, rng: random.Random | None = None) -> None:
        self.sender_ods = sender_ods
        self.rng = rng or random.Random()

    def order(self, performer_ods: str, *, items: int = 1, prescription_type: str = "1201") -> Message:
        rng = self.rng
        urls = {name: f"urn:uuid:{_uuid(rng)}" for name in ("patient", "role", "person", "org")}
        short_form = synthetic_short_form_id(rng, "A99968")
        long_form = _uuid(rng)
        nhs_number = synthetic_nhs_number(rng)
        item_ids = [_uuid(rng) for _ in range(items)]
        request_urls = [f"urn:uuid:{_uuid(rng)}" for _ in range(items)]
        header_url = f"urn:uuid:{_uuid(rng)}"
        requests = [
            self._request(url, item, short_form, long_form, performer_ods, prescription_type, n, urls)
            for n, (url, item) in enumerate(zip(request_urls, item_ids, strict=True))
        ]
        entries = [
            self._entry(header_url, self._header(urls["patient"], request_urls)),
            *requests,
            self._entry(urls["patient"], self._patient(nhs_number)),
            self._entry(urls["role"], self._role(urls["person"], urls["org"])),
            self._entry(urls["person"], {"resourceType": "Practitioner", **self._person()}),
            self._entry(urls["org"], self._organisation()),
        ]
        bundle = {
            "resourceType": "Bundle",
            "id": header_url.removeprefix("urn:uuid:"),
            "identifier": {"system": "https://tools.ietf.org/html/rfc4122", "value": _uuid(rng)},
            "type": "message",
            "entry": entries,
        }
        return Message(bundle, short_form, item_ids, nhs_number, self.sender_ods, performer_ods)

    def cancellation(self, order: Message, *, items: list[int] | None = None) -> Message:
        """A prescription-order-update cancelling some (default all) items of `order`, as EPS sends it."""
        cancel = order.copy()
        cancel.fresh_identifier(self.rng)
        cancel.header()["eventCoding"] = _coding(
            MESSAGE_EVENT_SYSTEM, "prescription-order-update", "Prescription Order Update"
        )
        keep = set(range(len(order.item_ids))) if items is None else set(items)
        requests = [e for e in cancel.bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
        dropped = {id(e) for n, e in enumerate(requests) if n not in keep}
        cancel.bundle["entry"] = [e for e in cancel.bundle["entry"] if id(e) not in dropped]
        kept_urls = {e["fullUrl"] for e in cancel.bundle["entry"]}
        cancel.header()["focus"] = [f for f in cancel.header()["focus"] if f["reference"] in kept_urls]
        for request in cancel.entries("MedicationRequest"):
            request["status"] = "cancelled"
            request["statusReason"] = {"coding": [_coding(STATUS_REASON_SYSTEM, "0001", "Prescribing Error")]}
        cancel.item_ids = [item for n, item in enumerate(order.item_ids) if n in keep]
        return cancel

    @staticmethod
    def _entry(url: str, resource: Json) -> Json:
        return {"fullUrl": url, "resource": {**resource, "id": url.removeprefix("urn:uuid:")}}

    def _header(self, patient_url: str, request_urls: list[str]) -> Json:
        return {
            "resourceType": "MessageHeader",
            "eventCoding": _coding(MESSAGE_EVENT_SYSTEM, "prescription-order", "Prescription Order"),
            "sender": {
                "identifier": {"system": ODS_SYSTEM, "value": self.sender_ods},
                "display": "Conformance Test Trust",
            },
            "source": {
                "endpoint": f"https://directory.spineservices.nhs.uk/STU3/Organization/{self.sender_ods}"
            },
            "focus": [{"reference": url} for url in [patient_url, *request_urls]],
        }

    def _request(
        self,
        url: str,
        item_id: str,
        short_form: str,
        long_form: str,
        performer_ods: str,
        prescription_type: str,
        position: int,
        urls: dict[str, str],
    ) -> Json:
        code, display = MEDICINES[position % len(MEDICINES)]
        resource = {
            "resourceType": "MedicationRequest",
            "extension": [
                {
                    "url": PRESCRIPTION_TYPE_EXTENSION,
                    "valueCoding": _coding(PRESCRIPTION_TYPE_SYSTEM, prescription_type, "Homecare"),
                }
            ],
            "identifier": [{"system": ITEM_SYSTEM, "value": item_id}],
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [_coding(SNOMED, code, display)]},
            "subject": {"reference": urls["patient"]},
            "requester": {"reference": urls["role"]},
            "groupIdentifier": {
                "extension": [
                    {
                        "url": LONG_FORM_EXTENSION,
                        "valueIdentifier": {"system": LONG_FORM_SYSTEM, "value": long_form},
                    }
                ],
                "system": PRESCRIPTION_ID_SYSTEM,
                "value": short_form,
            },
            "courseOfTherapyType": {
                "coding": [
                    _coding(
                        "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
                        "acute",
                        "Short course (acute) therapy",
                    )
                ]
            },
            "dosageInstruction": [{"text": "As directed"}],
            "dispenseRequest": {
                "performer": {"identifier": {"system": ODS_SYSTEM, "value": performer_ods}},
                "quantity": {"value": 1, "unit": "pack"},
            },
        }
        return self._entry(url, resource)

    @staticmethod
    def _patient(nhs_number: str) -> Json:
        return {
            "resourceType": "Patient",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs_number}],
            "name": [{"family": "CONFORMANCE", "given": ["TEST"]}],
            "gender": "unknown",
            "birthDate": "1980-01-01",
            "address": [{"postalCode": "ZZ99 3AZ"}],
        }

    @staticmethod
    def _role(person_url: str, org_url: str) -> Json:
        return {
            "resourceType": "PractitionerRole",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "100102238986"}],
            "practitioner": {"reference": person_url},
            "organization": {"reference": org_url},
        }

    @staticmethod
    def _person() -> Json:
        return {
            "identifier": [{"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "7020134158"}],
            "name": [{"family": "PRESCRIBER", "given": ["CONFORMANCE"]}],
        }

    def _organisation(self) -> Json:
        return {
            "resourceType": "Organization",
            "identifier": [{"system": ODS_SYSTEM, "value": "A99968"}],
            "name": "CONFORMANCE TEST OUTPATIENT PHARMACY",
            "partOf": {"identifier": {"system": ODS_SYSTEM, "value": self.sender_ods}},
        }


def status_task(
    order: Message,
    item_position: int,
    status: str,
    last_modified: str,
    *,
    owner_ods: str | None = None,
    note: str | None = None,
) -> Json:
    """A PSU-style status Task for one line item, as a provider reports it."""
    fhir_status = {
        "accepted": "accepted",
        "rejected": "rejected",
        "query": "on-hold",
        "delivered": "completed",
        "cancelled": "cancelled",
        "delivery-failed": "failed",
    }.get(status, "in-progress")
    task: Json = {
        "resourceType": "Task",
        "status": fhir_status,
        "intent": "order",
        "basedOn": [{"identifier": {"system": PRESCRIPTION_ID_SYSTEM, "value": order.short_form_id}}],
        "focus": {"identifier": {"system": ITEM_SYSTEM, "value": order.item_ids[item_position]}},
        "businessStatus": {"coding": [{"system": HOMECARE_STATUS_SYSTEM, "code": status}]},
        "lastModified": last_modified,
        "owner": {"identifier": {"system": ODS_SYSTEM, "value": owner_ods or order.performer_ods}},
    }
    if note:
        task["note"] = [{"text": note}]
    return task
