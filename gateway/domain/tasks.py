"""FHIR `Task` views of line items: one Task per item (its id is the item's gateway id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir_profiles import codes
from fhir_profiles.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
)
from gateway.domain.status import Status, business_status, task_status
from gateway.store.items import ItemView

TASK_IDENTIFIER_SYSTEM = "https://homecare-gateway.nhs.uk/Id/task"
PARTIAL_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-PrescriptionPartial"
VERDICT_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-StatusVerdict"
# Task.input carrying the medicine's name, so a status reader need not fetch the MedicationRequest.
TASK_INPUT_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/task-input"
TASK_INPUT_MEDICATION = "medication"
PRESCRIPTION_MESSAGE_INPUT = "prescription-message"


def fhir_instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def render_task(view: ItemView, *, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Task of a line item; `detail` is what the newest status event said (reason, delivery)."""
    status = Status(view.status)
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": view.item_id,
        "meta": {"versionId": str(view.version), "lastUpdated": fhir_instant(view.updated_at)},
        "identifier": [{"system": TASK_IDENTIFIER_SYSTEM, "value": view.item_id}],
        "basedOn": [
            {"identifier": {"system": PRESCRIPTION_ORDER_NUMBER_SYSTEM, "value": view.short_form_id}}
        ],
        "status": task_status(status),
        "businessStatus": business_status(status),
        "intent": "order",
        "focus": {
            "reference": f"MedicationRequest/{view.item_id}",
            "identifier": {"system": ORDER_ITEM_NUMBER_SYSTEM, "value": view.item_identifier},
        },
        "for": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": view.nhs_number}},
        "authoredOn": fhir_instant(view.created_at),
        "lastModified": fhir_instant(view.last_modified or view.updated_at),
        "requester": {"identifier": {"system": ODS_SYSTEM, "value": view.tenant_ods}},
        "owner": {"identifier": {"system": ODS_SYSTEM, "value": view.provider_ods}},
        "extension": [
            {
                "url": PARTIAL_URL,
                "extension": [
                    {"url": "prescriptionStatus", "valueCode": view.prescription_status},
                    {"url": "partial", "valueBoolean": view.partial},
                ],
            }
        ],
    }
    if view.medicine:
        task["input"] = [
            {
                "type": {
                    "coding": [
                        {"system": TASK_INPUT_SYSTEM, "code": TASK_INPUT_MEDICATION, "display": "Medication"}
                    ]
                },
                "valueCodeableConcept": {"text": view.medicine},
            }
        ]
    if detail:
        _add_detail(task, detail)
    return task


def with_prescription_message(task: dict[str, Any], message_id: str) -> dict[str, Any]:
    """The Task naming the prescription message Bundle to read (`GET /fhir/Bundle/{id}`), as the
    gateway offers orders to providers that pull them."""
    task["input"] = [
        {
            "type": {
                "coding": [
                    {
                        "system": TASK_INPUT_SYSTEM,
                        "code": PRESCRIPTION_MESSAGE_INPUT,
                        "display": "The prescription message, as the trust sent it",
                    }
                ]
            },
            "valueReference": {"reference": f"Bundle/{message_id}"},
        }
    ]
    return task


def _add_detail(task: dict[str, Any], detail: dict[str, Any]) -> None:
    reason = detail.get("reason")
    if isinstance(reason, dict) and (reason.get("code") or reason.get("text")):
        concept: dict[str, Any] = {}
        if reason.get("code"):
            concept["coding"] = [{"system": codes.STATUS_REASON_SYSTEM, "code": reason["code"]}]
        if reason.get("text"):
            concept["text"] = reason["text"]
        task["statusReason"] = concept
    party = detail.get("responsible_party")
    if isinstance(party, str):
        task["extension"].append(
            {
                "url": codes.RESPONSIBLE_PARTY_URL,
                "valueCoding": {"system": codes.RESPONSIBLE_PARTY_SYSTEM, "code": party},
            }
        )
    outputs: list[dict[str, Any]] = []
    window = detail.get("delivery_window")
    if isinstance(window, dict):
        outputs.append(
            {
                "type": _output_type(codes.TASK_OUTPUT_DELIVERY_WINDOW, "Delivery window"),
                "valuePeriod": {key: window[key] for key in ("start", "end") if key in window},
            }
        )
    attempt = detail.get("delivery_attempt")
    if isinstance(attempt, int):
        outputs.append(
            {
                "type": _output_type(codes.TASK_OUTPUT_DELIVERY_ATTEMPT, "Delivery attempt"),
                "valueInteger": attempt,
            }
        )
    if outputs:
        task["output"] = outputs


def _output_type(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": codes.TASK_OUTPUT_SYSTEM, "code": code, "display": display}]}
