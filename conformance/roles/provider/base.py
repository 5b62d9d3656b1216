"""What every provider transport shares: the acknowledgement of one send, the status report the tests
judge (a PSU-style Task, whatever protocol carried it), and the order facts a non-FHIR transport
writes into its own format, read from the suite's own message Bundle."""

from __future__ import annotations

import hashlib
from base64 import b32encode
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from conformance.config import ProviderConfig
from conformance.messages import (
    HOMECARE_STATUS_SYSTEM,
    ITEM_SYSTEM,
    LONG_FORM_EXTENSION,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    PRESCRIPTION_ID_SYSTEM,
    Message,
)
from conformance.model import Evidence, Exchange

Json = dict[str, Any]


@dataclass(frozen=True)
class Acknowledgement:
    """What the provider's system answered one send, in its protocol's words.

    `code` is what a person reads (`HTTP 201`, `AA`, `AE`, `picked up`, `no answer`); `accepted` means
    the order was taken (the gateway records `sent`); `permanent_refusal` that it was refused and must
    not be resent as it is, with `reason` as the provider gave it."""

    code: str
    accepted: bool
    permanent_refusal: bool = False
    reason: str | None = None
    status: int | None = None  # the HTTP status (fhir-rest)
    body: bytes = b""
    content_type: str = ""
    exchange: Exchange | None = None


@dataclass(frozen=True)
class StatusReport:
    """One status report about one line item, as a FHIR Task (a transport that reads HL7 or CSV turns
    each report into the Task the gateway would record); `problem` when it could not be read."""

    task: Json
    authorised: bool
    at: float
    problem: str | None = None

    @property
    def item(self) -> str | None:
        value = ((self.task.get("focus") or {}).get("identifier") or {}).get("value")
        return str(value) if value else None

    @property
    def status(self) -> str | None:
        codings = (self.task.get("businessStatus") or {}).get("coding") or [{}]
        code = codings[0].get("code") if isinstance(codings[0], dict) else None
        return str(code) if code else None


ReportSink = Callable[[list[StatusReport], Exchange], None]
"""Where a transport hands the reports it read, with the exchange that carried them (evidence)."""


class OrderTransport(Protocol):
    scheme: ClassVar[str]
    status_over_http: ClassVar[bool]
    """True: the provider reports to the suite's FHIR status API at --listen (`POST /fhir/Task`)."""
    refusals_answered: ClassVar[bool]
    """True: a refusal is the answer to the send; False: it can only come back as a status report."""
    same_second_reports: ClassVar[bool]
    """True: the protocol's times have whole seconds, so two reports of an item may share one."""
    invalid_order: ClassVar[str]
    """What the suite's invalid order is in this protocol."""

    def __init__(self, target: str, config: ProviderConfig, sends: Evidence) -> None: ...

    def open(self, sink: ReportSink, listen: tuple[str, int] | None) -> None: ...

    @property
    def status_address(self) -> str: ...

    def send(
        self, message: Message, *, idempotency_key: str, request_id: str, invalid: bool = False
    ) -> Acknowledgement: ...

    def close(self) -> None: ...


# --- the order as a non-FHIR transport writes it ----------------------------------------------------


@dataclass(frozen=True)
class Line:
    item_identifier: str
    medication_code: str
    medication_name: str
    dosage_text: str
    quantity_value: str
    quantity_unit: str
    cancel_reason_code: str = ""
    cancel_reason: str = ""


@dataclass(frozen=True)
class OrderFacts:
    """What the README's HL7 v2 and CSV mappings take from a prescription message."""

    kind: str  # "new" or "cancel"
    short_form_id: str
    long_form_id: str
    trust_ods: str
    provider_ods: str
    nhs_number: str
    family_name: str
    given_names: list[str]
    birth_date: str
    gender: str
    postcode: str
    lines: list[Line] = field(default_factory=list)


def order_facts(message: Message) -> OrderFacts:
    """The facts of the suite's own message Bundle (read from the Bundle, so a changed copy reads as changed)."""
    header = message.header()
    kind = "cancel" if header["eventCoding"]["code"] == "prescription-order-update" else "new"
    requests = message.entries("MedicationRequest")
    patients = message.entries("Patient")
    patient = patients[0] if patients else {}
    name = (patient.get("name") or [{}])[0]
    first = requests[0] if requests else {}
    group = first.get("groupIdentifier", {})
    long_form = next(
        (
            e["valueIdentifier"]["value"]
            for e in group.get("extension", [])
            if e["url"] == LONG_FORM_EXTENSION
        ),
        "",
    )
    performer = first.get("dispenseRequest", {}).get("performer", {}).get("identifier", {})
    lines = []
    for request in requests:
        coding = request["medicationCodeableConcept"]["coding"][0]
        quantity = request.get("dispenseRequest", {}).get("quantity", {})
        reason = ((request.get("statusReason") or {}).get("coding") or [{}])[0]
        lines.append(
            Line(
                item_identifier=_identifier(request.get("identifier", []), ITEM_SYSTEM),
                medication_code=str(coding.get("code", "")),
                medication_name=str(coding.get("display", "")),
                dosage_text=str((request.get("dosageInstruction") or [{}])[0].get("text", "")),
                quantity_value=str(quantity.get("value", "")),
                quantity_unit=str(quantity.get("unit", "")),
                cancel_reason_code=str(reason.get("code", "")) if kind == "cancel" else "",
                cancel_reason=str(reason.get("display", "")) if kind == "cancel" else "",
            )
        )
    return OrderFacts(
        kind=kind,
        short_form_id=str(group.get("value", "")),
        long_form_id=str(long_form),
        trust_ods=str(header.get("sender", {}).get("identifier", {}).get("value", "")),
        provider_ods=str(performer.get("value", "")),
        nhs_number=_identifier(patient.get("identifier", []), NHS_NUMBER_SYSTEM),
        family_name=str(name.get("family", "")),
        given_names=[str(given) for given in name.get("given", [])],
        birth_date=str(patient.get("birthDate", "")),
        gender=str(patient.get("gender", "")),
        postcode=str((patient.get("address") or [{}])[0].get("postalCode", "")),
        lines=lines,
    )


def _identifier(identifiers: list[Json], system: str) -> str:
    return next((str(i["value"]) for i in identifiers if i.get("system") == system), "")


def control_id(idempotency_key: str) -> str:
    """A 20-character id (HL7 MSH-10 is ST 20) derived from the idempotency key: the same for every resend."""
    return b32encode(hashlib.sha256(idempotency_key.encode()).digest()).decode()[:20]


# --- the Task a report becomes ----------------------------------------------------------------------

_TASK_STATUS = {
    "accepted": "accepted",
    "rejected": "rejected",
    "query": "on-hold",
    "delivered": "completed",
    "cancelled": "cancelled",
    "delivery-failed": "failed",
}


def report_task(
    *,
    short_form_id: str,
    item: str,
    status: str | None,
    occurred_at: datetime | None,
    owner_ods: str,
    reason_code: str | None = None,
    reason_text: str | None = None,
) -> Json:
    """The Task the gateway would record for a status report read from HL7 v2 or a CSV row."""
    task: Json = {
        "resourceType": "Task",
        "status": _TASK_STATUS.get(status or "", "in-progress"),
        "intent": "order",
        "basedOn": [{"identifier": {"system": PRESCRIPTION_ID_SYSTEM, "value": short_form_id}}],
        "focus": {"identifier": {"system": ITEM_SYSTEM, "value": item}},
        "businessStatus": {"coding": [{"system": HOMECARE_STATUS_SYSTEM, "code": status}]},
        "owner": {"identifier": {"system": ODS_SYSTEM, "value": owner_ods}},
    }
    if occurred_at is not None:
        task["lastModified"] = occurred_at.astimezone(UTC).isoformat()
    if reason_code or reason_text:
        task["statusReason"] = {
            "coding": [{"code": reason_code}] if reason_code else [],
            "text": reason_text or reason_code,
        }
    return task
