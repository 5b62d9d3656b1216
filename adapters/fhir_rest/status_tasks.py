"""PSU-style status `Task`s: how a provider reports the status of one line item of a prescription.

Shaped like the EPS Prescription Status Update examples (`basedOn` the short-form prescription ID,
`focus` the line item, `for` the patient's NHS number, `owner` the provider's ODS code,
`businessStatus`, `lastModified`), with the gateway's own status codes in `businessStatus`, the reason
in `statusReason`, who caused a failed delivery in an extension, and the delivery window and attempt
in `output`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from adapters.inbound import DeliveryWindow
from adapters.simulation.lifecycle import Reason
from fhir_profiles import codes
from fhir_profiles.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
)

# FHIR Task.status for each business status a provider reports. `delivery-failed` is `failed` for
# the attempt; a rescheduled delivery moves the item back to `in-progress`.
TASK_STATUS = {
    "accepted": "accepted",
    "rejected": "rejected",
    "query": "on-hold",
    "in-preparation": "in-progress",
    "dispensed": "in-progress",
    "delivery-scheduled": "in-progress",
    "out-for-delivery": "in-progress",
    "delivered": "completed",
    "delivery-failed": "failed",
    "cancelled": "cancelled",
}
STATUS_DISPLAY = {
    "accepted": "Accepted",
    "rejected": "Rejected",
    "query": "Query raised",
    "in-preparation": "In preparation",
    "dispensed": "Dispensed",
    "delivery-scheduled": "Delivery scheduled",
    "out-for-delivery": "Out for delivery",
    "delivered": "Delivered",
    "delivery-failed": "Delivery failed",
    "cancelled": "Cancelled",
}
_TASK_NAMESPACE = uuid.UUID("3c7a61f2-4a59-4f0e-9a0b-6f1d2f0c5e11")


def fhir_instant(moment: datetime) -> str:
    """An instant in UTC with microseconds, e.g. `2026-11-23T09:00:00.000001Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def task_id(provider_ods: str, short_form_id: str, item_id: str, sequence: int) -> str:
    """A stable id per report, so a repeated run makes the same Tasks."""
    return str(uuid.uuid5(_TASK_NAMESPACE, f"{provider_ods}/{short_form_id}/{item_id}/{sequence}"))


def status_task(
    *,
    task_id: str,
    short_form_id: str,
    item_id: str,
    nhs_number: str,
    provider_ods: str,
    status: str,
    last_modified: datetime,
    reason: Reason | None = None,
    window: DeliveryWindow | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """One status report for one line item, as a FHIR R4 Task."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "basedOn": [{"identifier": {"system": PRESCRIPTION_ORDER_NUMBER_SYSTEM, "value": short_form_id}}],
        "status": TASK_STATUS[status],
        "businessStatus": {
            "coding": [
                {"system": codes.HOMECARE_STATUS_SYSTEM, "code": status, "display": STATUS_DISPLAY[status]}
            ]
        },
        "intent": "order",
        "focus": {"identifier": {"system": ORDER_ITEM_NUMBER_SYSTEM, "value": item_id}},
        "for": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}},
        "lastModified": fhir_instant(last_modified),
        "owner": {"identifier": {"system": ODS_SYSTEM, "value": provider_ods}},
    }
    if reason is not None:
        task["statusReason"] = {
            "coding": [
                {"system": codes.STATUS_REASON_SYSTEM, "code": reason.code, "display": reason.display}
            ],
            "text": reason.display,
        }
        if reason.party is not None:
            task["extension"] = [
                {
                    "url": codes.RESPONSIBLE_PARTY_URL,
                    "valueCoding": {"system": codes.RESPONSIBLE_PARTY_SYSTEM, "code": reason.party},
                }
            ]
    outputs: list[dict[str, Any]] = []
    if window is not None:
        outputs.append(
            {
                "type": _output_type(codes.TASK_OUTPUT_DELIVERY_WINDOW, "Delivery window"),
                "valuePeriod": {"start": fhir_instant(window.start), "end": fhir_instant(window.end)},
            }
        )
    if attempt is not None:
        outputs.append(
            {
                "type": _output_type(codes.TASK_OUTPUT_DELIVERY_ATTEMPT, "Delivery attempt"),
                "valueInteger": attempt,
            }
        )
    if outputs:
        task["output"] = outputs
    return task


def _output_type(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": codes.TASK_OUTPUT_SYSTEM, "code": code, "display": display}]}
