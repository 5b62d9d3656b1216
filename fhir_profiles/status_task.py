"""Status reports from providers: PSU-style `Task` resources, one per prescription line item.

A provider says which item (`basedOn` the short-form prescription ID, `focus` the line item
identifier), what happened (`businessStatus`, in the gateway's code system or as an EPS
Prescription Status Update code), when (`lastModified`), who it is (`owner`), and for some statuses
why (`statusReason`), who caused it (an extension) and the delivery window or attempt (`output`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir.resources.R4B.task import Task as R4BTask
from pydantic import ValidationError

from fhir_profiles import codes
from fhir_profiles.identifiers import (
    ODS_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
    is_item_identifier,
    is_ods_code,
    is_short_form_id_shaped,
)
from fhir_profiles.outcome import ErrorCode, Issue, IssueType
from fhir_profiles.structure import issue_from_error

PSU_STATUS_SYSTEM = "https://fhir.nhs.uk/CodeSystem/task-businessStatus-nppt"
# EPS Prescription Status Update codes, mapped onto the homecare lifecycle. The "- Partial" codes
# say some items are further on: the gateway derives that itself from the items it holds.
PSU_TO_HOMECARE = {
    "With Pharmacy": "accepted",
    "With Pharmacy - Preparing Remainder": "in-preparation",
    "Ready to Collect": "dispensed",
    "Ready to Collect - Partial": "dispensed",
    "Ready to Dispatch": "dispensed",
    "Ready to Dispatch - Partial": "dispensed",
    "Dispatched": "out-for-delivery",
    "Collected": "delivered",
    "Not Dispensed": "rejected",
}
# What a provider may report; the gateway's own statuses (queued, sent...) are not theirs to set.
PROVIDER_STATUSES = frozenset(
    {
        "accepted",
        "rejected",
        "query",
        "in-preparation",
        "dispensed",
        "delivery-scheduled",
        "out-for-delivery",
        "delivered",
        "delivery-failed",
        "cancelled",
    }
)
RESPONSIBLE_PARTIES = frozenset({"patient", "trust", "provider", "courier"})


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One provider status update for one line item, read from a Task."""

    short_form_id: str
    item_identifier: str
    owner_ods: str
    status: str
    occurred_at: datetime
    task_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def read_status_task(task: Any, *, base: str = "Task") -> tuple[StatusReport | None, list[Issue]]:
    """The report a Task carries, or every problem with it (expressions start at `base`)."""
    if not isinstance(task, dict) or task.get("resourceType") != "Task":
        return None, [
            Issue(IssueType.STRUCTURE, ErrorCode.INVALID_RESOURCE_TYPE, "Expected a FHIR Task", base)
        ]
    issues = _structure_issues(task, base)
    short_form, item_identifier, owner = _named_item(task, base, issues)
    status = _business_status(task, base, issues)
    occurred_at = _last_modified(task, base, issues)
    if issues or short_form is None or item_identifier is None or owner is None or status is None:
        return None, issues
    assert occurred_at is not None
    task_id = task.get("id") if isinstance(task.get("id"), str) else None
    return (
        StatusReport(
            short_form_id=short_form,
            item_identifier=item_identifier,
            owner_ods=owner,
            status=status,
            occurred_at=occurred_at,
            task_id=task_id,
            detail=_detail(task),
        ),
        [],
    )


def _structure_issues(task: dict[str, Any], base: str) -> list[Issue]:
    """The Task checked against FHIR R4 (fhir.resources R4B), expressions rebased at `base`."""
    try:
        R4BTask.model_validate(task)
    except ValidationError as exc:
        found = [issue_from_error(error, ()) for error in exc.errors(include_input=False, include_url=False)]
        return [
            Issue(
                i.code, i.detail, i.diagnostics, (i.expression or "").replace("Bundle", base, 1), i.severity
            )
            for i in found
        ]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return [
            Issue(
                IssueType.STRUCTURE, ErrorCode.INVALID_VALUE, f"Not a valid Task: {type(exc).__name__}", base
            )
        ]
    return []


def _named_item(
    task: dict[str, Any], base: str, issues: list[Issue]
) -> tuple[str | None, str | None, str | None]:
    """The prescription (basedOn), line item (focus) and provider (owner) the Task names; a problem
    with any of them is added to `issues` and that one is None."""
    short_form = _identifier(task.get("basedOn"), PRESCRIPTION_ORDER_NUMBER_SYSTEM, many=True)
    if short_form is None or not is_short_form_id_shaped(short_form):
        issues.append(
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                "basedOn must identify the prescription by its short-form ID "
                f"({PRESCRIPTION_ORDER_NUMBER_SYSTEM})",
                f"{base}.basedOn",
            )
        )
    item_identifier = _identifier(task.get("focus"), ORDER_ITEM_NUMBER_SYSTEM)
    if item_identifier is not None and not is_item_identifier(item_identifier):
        item_identifier = None
    if item_identifier is None:
        issues.append(
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                f"focus must identify the line item ({ORDER_ITEM_NUMBER_SYSTEM}): 1-64 ASCII letters, "
                "digits, '.' and '-'",
                f"{base}.focus.identifier",
            )
        )
    owner = _identifier(task.get("owner"), ODS_SYSTEM)
    if owner is not None and not is_ods_code(owner):
        owner = None
    if owner is None:
        issues.append(
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                f"owner must be the provider's ODS code ({ODS_SYSTEM}): 3-12 of A-Z and 0-9",
                f"{base}.owner.identifier",
            )
        )
    return short_form, item_identifier, owner


def _identifier(value: Any, system: str, *, many: bool = False) -> str | None:
    references = _list(value) if many else [value]
    for reference in references:
        identifier = _dict(_dict(reference).get("identifier"))
        if identifier.get("system") == system and isinstance(identifier.get("value"), str):
            return str(identifier["value"])
    return None


def _business_status(task: dict[str, Any], base: str, issues: list[Issue]) -> str | None:
    for coding in _list(_dict(task.get("businessStatus")).get("coding")):
        system, code = _dict(coding).get("system"), _dict(coding).get("code")
        if not isinstance(code, str):
            code = repr(code)  # a number or an object: not a status, and not hashable either
        if system == codes.HOMECARE_STATUS_SYSTEM and code in PROVIDER_STATUSES:
            return str(code)
        if system == PSU_STATUS_SYSTEM and code in PSU_TO_HOMECARE:
            return PSU_TO_HOMECARE[str(code)]
        if system in (codes.HOMECARE_STATUS_SYSTEM, PSU_STATUS_SYSTEM):
            issues.append(
                Issue(
                    IssueType.VALUE,
                    ErrorCode.INVALID_VALUE,
                    f"'{str(code)[:64]}' is not a status a provider can report; use one of "
                    + ", ".join(sorted(PROVIDER_STATUSES)),
                    f"{base}.businessStatus.coding.code",
                )
            )
            return None
    issues.append(
        Issue(
            IssueType.REQUIRED,
            ErrorCode.MISSING_FIELD,
            f"businessStatus needs a code from {codes.HOMECARE_STATUS_SYSTEM} or {PSU_STATUS_SYSTEM}",
            f"{base}.businessStatus",
        )
    )
    return None


def _last_modified(task: dict[str, Any], base: str, issues: list[Issue]) -> datetime | None:
    value = task.get("lastModified")
    if not isinstance(value, str):
        issues.append(
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                "lastModified (when it happened) is required",
                f"{base}.lastModified",
            )
        )
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        issues.append(
            Issue(
                IssueType.VALUE,
                ErrorCode.INVALID_VALUE,
                "lastModified must be a date and time with a time zone",
                f"{base}.lastModified",
            )
        )
        return None
    return moment


def _detail(task: dict[str, Any]) -> dict[str, Any]:
    """Reason, who caused it, delivery window and attempt, and any note: no patient data."""
    detail: dict[str, Any] = {}
    reason = _dict(task.get("statusReason"))
    code = next(
        (str(c["code"]) for c in _list(reason.get("coding")) if isinstance(_dict(c).get("code"), str)), None
    )
    text = reason.get("text") if isinstance(reason.get("text"), str) else None
    if code or text:
        detail["reason"] = {"code": code, "text": text}
    for extension in _list(task.get("extension")):
        if _dict(extension).get("url") == codes.RESPONSIBLE_PARTY_URL:
            party = _dict(_dict(extension).get("valueCoding")).get("code")
            if party in RESPONSIBLE_PARTIES:
                detail["responsible_party"] = party
    for output in _list(task.get("output")):
        kinds = {_dict(c).get("code") for c in _list(_dict(_dict(output).get("type")).get("coding"))}
        if codes.TASK_OUTPUT_DELIVERY_WINDOW in kinds and isinstance(_dict(output).get("valuePeriod"), dict):
            detail["delivery_window"] = {
                key: value for key, value in output["valuePeriod"].items() if key in ("start", "end")
            }
        if codes.TASK_OUTPUT_DELIVERY_ATTEMPT in kinds and isinstance(_dict(output).get("valueInteger"), int):
            detail["delivery_attempt"] = output["valueInteger"]
    notes = [n.get("text") for n in _list(task.get("note")) if isinstance(_dict(n).get("text"), str)]
    if notes:
        detail["note"] = "\n".join(notes)[:2000]
    if isinstance(task.get("id"), str):
        detail["provider_task_id"] = task["id"][:64]
    return detail
