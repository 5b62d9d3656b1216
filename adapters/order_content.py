"""What an order says, read out of the trust's message Bundle for adapters that cannot forward the Bundle
itself (HL7 v2, CSV files): the patient, each line item's medicine, dose, route, timing and quantity,
and for a cancellation each item's reason.

The Bundle was validated at intake; it is read again here with `fhir_profiles` so that the adapter
never trusts a shape it has not checked. A message that cannot be read raises `OrderNotExpressible`:
the dispatcher retries it like any adapter failure until it is dead, and people are alerted, since no
resend can fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from adapters.base import Order
from fhir_profiles.homecare import validate_message
from fhir_profiles.identifiers import NHS_NUMBER_SYSTEM, ORDER_ITEM_NUMBER_SYSTEM


class OrderNotExpressible(ValueError):  # noqa: N818 -- named for what it is
    """The order's message cannot be read into the provider's format (no patient data in the text)."""


@dataclass(frozen=True, slots=True)
class PatientDetails:
    nhs_number: str
    family: str | None
    given: tuple[str, ...]
    prefix: str | None
    birth_date: str | None
    """`YYYY-MM-DD` (or a shorter FHIR date) as the trust sent it."""
    gender: str | None
    address_lines: tuple[str, ...]
    city: str | None
    postcode: str | None


@dataclass(frozen=True, slots=True)
class Coded:
    code: str | None
    display: str | None


@dataclass(frozen=True, slots=True)
class Timing:
    """`dosageInstruction.timing.repeat`: `frequency` times per `period` `period_unit` (UCUM-ish FHIR units)."""

    frequency: int
    period: float
    period_unit: str


@dataclass(frozen=True, slots=True)
class OrderLine:
    item_identifier: str
    medication: Coded
    dosage_text: str | None
    dose_value: str | None
    dose_unit: Coded | None
    route: Coded | None
    timing: Timing | None
    quantity_value: str | None
    quantity_unit: Coded | None
    cancel_reason: Coded | None = None


@dataclass(frozen=True, slots=True)
class OrderContent:
    kind: str
    """`new` or `cancel`."""
    bundle_identifier: str
    short_form_id: str
    long_form_id: str | None
    sender_ods: str
    provider_ods: str
    patient: PatientDetails | None
    lines: tuple[OrderLine, ...]
    valid_until: str | None


def read_order_content(order: Order) -> OrderContent:
    try:
        document = orjson.loads(order.message)
    except orjson.JSONDecodeError as exc:
        raise OrderNotExpressible("the order's message is not JSON") from exc
    result = validate_message(document, order.message)
    entries = _entries(document)
    if order.kind == "new" and result.order is not None:
        found = result.order
        lines = tuple(_line(item.resource, item.item_identifier) for item in found.items)
        return OrderContent(
            kind="new",
            bundle_identifier=found.bundle_identifier,
            short_form_id=found.short_form_id,
            long_form_id=found.long_form_id,
            sender_ods=found.sender_ods,
            provider_ods=order.provider_ods,
            patient=_patient(entries, found.items[0].resource),
            lines=lines,
            valid_until=found.valid_until,
        )
    if order.kind == "cancel" and result.cancellation is not None:
        cancellation = result.cancellation
        reasons = {item: Coded(code, display or None) for item, code, display in cancellation.items}
        requests = [r for r in entries.values() if r.get("resourceType") == "MedicationRequest"]
        lines = tuple(
            _line(request, item, cancel_reason=reasons[item])
            for request in requests
            if (item := _item_identifier(request)) in reasons
        )
        return OrderContent(
            kind="cancel",
            bundle_identifier=cancellation.bundle_identifier,
            short_form_id=cancellation.short_form_id,
            long_form_id=None,
            sender_ods=cancellation.sender_ods,
            provider_ods=order.provider_ods,
            patient=_patient(entries, requests[0]) if requests else None,
            lines=lines,
            valid_until=None,
        )
    problems = "; ".join(issue.diagnostics for issue in result.issues[:3]) or "not the expected message"
    raise OrderNotExpressible(f"the {order.kind} order's message cannot be read: {problems}")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return str(value)


def _entries(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Resources by fullUrl (references resolve by fullUrl, DESIGN §10)."""
    found: dict[str, dict[str, Any]] = {}
    for position, entry in enumerate(_list(document.get("entry"))):
        resource = _dict(_dict(entry).get("resource"))
        found[_text(_dict(entry).get("fullUrl")) or f"#{position}"] = resource
    return found


def _item_identifier(request: dict[str, Any]) -> str | None:
    for identifier in _list(request.get("identifier")):
        if _dict(identifier).get("system") == ORDER_ITEM_NUMBER_SYSTEM:
            return _text(identifier.get("value"))
    return None


def _coded(concept: Any) -> Coded | None:
    coding = _dict(next(iter(_list(_dict(concept).get("coding"))), None))
    code, display = (
        _text(coding.get("code")),
        _text(coding.get("display")) or _text(_dict(concept).get("text")),
    )
    return Coded(code, display) if code or display else None


def _line(request: dict[str, Any], item_identifier: str, *, cancel_reason: Coded | None = None) -> OrderLine:
    dosages = [_dict(d) for d in _list(request.get("dosageInstruction"))]
    first = dosages[0] if dosages else {}
    texts = [text for d in dosages if (text := _text(d.get("text")))]
    dose = _dict(_dict(next(iter(_list(first.get("doseAndRate"))), None)).get("doseQuantity"))
    quantity = _dict(_dict(request.get("dispenseRequest")).get("quantity"))
    return OrderLine(
        item_identifier=item_identifier,
        medication=_coded(request.get("medicationCodeableConcept")) or Coded(None, None),
        dosage_text="; ".join(texts) or None,
        dose_value=_number(dose.get("value")),
        dose_unit=Coded(_text(dose.get("code")), _text(dose.get("unit"))) if dose else None,
        route=_coded(first.get("route")),
        timing=_timing(_dict(_dict(first.get("timing")).get("repeat"))),
        quantity_value=_number(quantity.get("value")),
        quantity_unit=Coded(_text(quantity.get("code")), _text(quantity.get("unit"))) if quantity else None,
        cancel_reason=cancel_reason,
    )


def _timing(repeat: dict[str, Any]) -> Timing | None:
    frequency, period, unit = (
        repeat.get("frequency", 1),
        repeat.get("period"),
        _text(repeat.get("periodUnit")),
    )
    if not isinstance(frequency, int) or isinstance(period, bool) or not isinstance(period, int | float):
        return None
    return Timing(frequency, float(period), unit) if unit else None


def _patient(entries: dict[str, dict[str, Any]], request: dict[str, Any]) -> PatientDetails | None:
    reference = _text(_dict(request.get("subject")).get("reference"))
    patient = entries.get(reference or "")
    if patient is None or patient.get("resourceType") != "Patient":
        return None
    nhs_number = next(
        (
            _text(identifier.get("value"))
            for identifier in map(_dict, _list(patient.get("identifier")))
            if identifier.get("system") == NHS_NUMBER_SYSTEM
        ),
        None,
    )
    if nhs_number is None:
        return None
    names = [_dict(name) for name in _list(patient.get("name"))]
    name = next((n for n in names if n.get("use") in ("official", "usual")), names[0] if names else {})
    addresses = [_dict(address) for address in _list(patient.get("address"))]
    address = next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {})
    return PatientDetails(
        nhs_number=nhs_number,
        family=_text(name.get("family")),
        given=tuple(given for given in _list(name.get("given")) if isinstance(given, str)),
        prefix=next((p for p in _list(name.get("prefix")) if isinstance(p, str)), None),
        birth_date=_text(patient.get("birthDate")),
        gender=_text(patient.get("gender")),
        address_lines=tuple(line for line in _list(address.get("line")) if isinstance(line, str)),
        city=_text(address.get("city")),
        postcode=_text(address.get("postalCode")),
    )
