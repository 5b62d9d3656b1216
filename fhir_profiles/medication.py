"""What a person reads off a prescription: the medicine's name, the dosage, the patient's initials.

Read defensively from resources that already passed validation (or were stored before a rule
existed): a missing element gives None, never an error.
"""

from __future__ import annotations

from typing import Any

from fhir_profiles.identifiers import NHS_NUMBER_SYSTEM


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def medicine_name(request: Any) -> str | None:
    """The medicine of a MedicationRequest as the prescriber's system named it.

    `medicationCodeableConcept.text` when given (what the prescriber saw), else the first coding's
    display (EPS sends the dm+d description there). A `medicationReference` names no medicine here.
    """
    concept = _dict(_dict(request).get("medicationCodeableConcept"))
    name = _text(concept.get("text"))
    if name is None:
        name = next((_text(_dict(c).get("display")) for c in _list(concept.get("coding"))), None)
    return name[:500] if name else None


def dosage_text(request: Any) -> str | None:
    """The dosage instructions' text, one line per instruction."""
    lines = [
        text
        for dosage in _list(_dict(request).get("dosageInstruction"))
        if (text := _text(_dict(dosage).get("text")))
    ]
    return "; ".join(lines) or None


def quantity_text(request: Any) -> str | None:
    """How much to supply, as `2 pre-filled disposable injection`."""
    quantity = _dict(_dict(_dict(request).get("dispenseRequest")).get("quantity"))
    value = quantity.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    shown = f"{value:g}"
    unit = _text(quantity.get("unit"))
    return f"{shown} {unit}" if unit else shown


def message_patient(bundle: Any) -> dict[str, Any]:
    """The first Patient resource of a message Bundle ({} when there is none)."""
    for entry in _list(_dict(bundle).get("entry")):
        resource = _dict(_dict(entry).get("resource"))
        if resource.get("resourceType") == "Patient":
            return resource
    return {}


def patient_name(patient: Any) -> str | None:
    """`Given FAMILY` from the patient's first (usual, if any) name."""
    names = [_dict(name) for name in _list(_dict(patient).get("name"))]
    chosen = next((name for name in names if name.get("use") == "usual"), names[0] if names else {})
    given = [part for part in (_text(g) for g in _list(chosen.get("given"))) if part]
    family = _text(chosen.get("family"))
    parts = [*given, *([family] if family else [])]
    return " ".join(parts) or _text(chosen.get("text"))


def initials(name: str | None) -> str:
    """`A. T.` for `Alex Tester`; `?` when the name is unknown."""
    if not name:
        return "?"
    return " ".join(f"{word[0].upper()}." for word in name.split() if word[0].isalpha()) or "?"


def birth_date(patient: Any) -> str | None:
    return _text(_dict(patient).get("birthDate"))


def patient_nhs_number(patient: Any) -> str | None:
    for identifier in _list(_dict(patient).get("identifier")):
        if _dict(identifier).get("system") == NHS_NUMBER_SYSTEM:
            return _text(_dict(identifier).get("value"))
    return None


def masked_nhs_number(nhs_number: str) -> str:
    """The last four digits only, shaped like an NHS number: `*** *** 4567`."""
    return f"*** *** {nhs_number[-4:]}" if len(nhs_number) >= 4 else "***"
