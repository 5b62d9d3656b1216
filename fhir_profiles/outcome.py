"""OperationOutcome issues: how every problem with a message is described and returned.

Validation collects `Issue`s; an `OperationOutcomeError` carries them (and the HTTP status they
deserve) to the one place that renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SPINE_ERROR_SYSTEM = "https://fhir.nhs.uk/CodeSystem/Spine-ErrorOrWarningCode"
GATEWAY_ERROR_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/gateway-error"


class Severity(StrEnum):
    FATAL = "fatal"
    ERROR = "error"
    WARNING = "warning"
    INFORMATION = "information"


class IssueType(StrEnum):
    """The FHIR `issue-type` codes we use."""

    INVALID = "invalid"
    STRUCTURE = "structure"
    INCOMPLETE = "incomplete"
    REQUIRED = "required"
    VALUE = "value"
    INVARIANT = "invariant"
    SECURITY = "security"
    LOGIN = "login"
    FORBIDDEN = "forbidden"
    PROCESSING = "processing"
    NOT_SUPPORTED = "not-supported"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    TOO_LONG = "too-long"
    BUSINESS_RULE = "business-rule"
    EXCEPTION = "exception"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    THROTTLED = "throttled"
    INFORMATIONAL = "informational"


class ErrorCode(StrEnum):
    """Machine-actionable detail codes (Spine-ErrorOrWarningCode where one fits)."""

    MISSING_FIELD = "MISSING_FIELD"
    INVALID_VALUE = "INVALID_VALUE"
    INVALID_CHECK_DIGIT = "INVALID_CHECK_DIGIT"
    FAILURE_TO_PROCESS_MESSAGE = "FAILURE_TO_PROCESS_MESSAGE"
    INVALID_RESOURCE_TYPE = "INVALID_RESOURCE_TYPE"
    UNSUPPORTED_MESSAGE_EVENT = "UNSUPPORTED_MESSAGE_EVENT"
    NOT_HOMECARE_PRESCRIPTION = "NOT_HOMECARE_PRESCRIPTION"
    UNKNOWN_PROVIDER = "UNKNOWN_PROVIDER"
    PATIENT_DECEASED = "PATIENT_DECEASED"
    DUPLICATE_PRESCRIPTION_ID = "DUPLICATE_PRESCRIPTION_ID"
    DUPLICATE_REJECTED = "DUPLICATE_REJECTED"
    INVALID_JSON = "INVALID_JSON"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    ACCESS_DENIED = "ACCESS_DENIED"
    NO_RECORD_FOUND = "NO_RECORD_FOUND"
    NOT_ALLOWED = "NOT_ALLOWED"
    SERVER_ERROR = "SERVER_ERROR"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"


# Codes published by NHS Spine; the rest are the gateway's own.
_SPINE_CODES = frozenset(
    {
        ErrorCode.MISSING_FIELD,
        ErrorCode.INVALID_VALUE,
        ErrorCode.INVALID_CHECK_DIGIT,
        ErrorCode.FAILURE_TO_PROCESS_MESSAGE,
        ErrorCode.INVALID_RESOURCE_TYPE,
        ErrorCode.DUPLICATE_REJECTED,
        ErrorCode.ACCESS_DENIED,
        ErrorCode.NO_RECORD_FOUND,
        ErrorCode.NOT_ALLOWED,
        ErrorCode.SERVER_ERROR,
    }
)

_DISPLAY: dict[ErrorCode, str] = {
    ErrorCode.MISSING_FIELD: "Missing field",
    ErrorCode.INVALID_VALUE: "Invalid value",
    ErrorCode.INVALID_CHECK_DIGIT: "Invalid check digit",
    ErrorCode.FAILURE_TO_PROCESS_MESSAGE: "Unable to process message. Information missing or invalid",
    ErrorCode.INVALID_RESOURCE_TYPE: "Invalid resource type",
    ErrorCode.UNSUPPORTED_MESSAGE_EVENT: "Message event not supported",
    ErrorCode.NOT_HOMECARE_PRESCRIPTION: "Not a homecare prescription",
    ErrorCode.UNKNOWN_PROVIDER: "Unknown homecare provider",
    ErrorCode.PATIENT_DECEASED: "Patient is deceased",
    ErrorCode.DUPLICATE_PRESCRIPTION_ID: "Duplicate prescription ID",
    ErrorCode.DUPLICATE_REJECTED: "Duplicate message rejected",
    ErrorCode.INVALID_JSON: "Body is not valid JSON",
    ErrorCode.PAYLOAD_TOO_LARGE: "Request body too large",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
    ErrorCode.ACCESS_DENIED: "Access denied",
    ErrorCode.NO_RECORD_FOUND: "No record found",
    ErrorCode.NOT_ALLOWED: "Not allowed",
    ErrorCode.SERVER_ERROR: "Server error",
    ErrorCode.TOO_MANY_REQUESTS: "Too many requests",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "Too many subscriptions",
}


def code_system(code: ErrorCode) -> str:
    return SPINE_ERROR_SYSTEM if code in _SPINE_CODES else GATEWAY_ERROR_SYSTEM


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with a request, pointing at the element that is wrong."""

    code: IssueType
    detail: ErrorCode
    diagnostics: str
    expression: str | None = None
    severity: Severity = Severity.ERROR

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity.value,
            "code": self.code.value,
            "details": {
                "coding": [
                    {
                        "system": code_system(self.detail),
                        "code": self.detail.value,
                        "display": _DISPLAY[self.detail],
                    }
                ]
            },
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


def operation_outcome(issues: list[Issue], *, resource_id: str | None = None) -> dict[str, Any]:
    outcome: dict[str, Any] = {"resourceType": "OperationOutcome"}
    if resource_id:
        outcome["id"] = resource_id
    outcome["issue"] = [issue.to_fhir() for issue in issues]
    return outcome


def success_outcome(diagnostics: str) -> dict[str, Any]:
    """The EPS answer to an accepted message: one informational issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics}],
    }


@dataclass(slots=True)
class OperationOutcomeError(Exception):
    """Raised anywhere; rendered as one OperationOutcome response in one handler."""

    status_code: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status_code}: " + "; ".join(i.detail.value for i in self.issues)


def status_for(issues: list[Issue]) -> int:
    """400 for anything structurally or clinically invalid; 422 when only business rules fail."""
    if any(i.code not in _UNPROCESSABLE for i in issues):
        return 400
    return 422


_UNPROCESSABLE = frozenset({IssueType.BUSINESS_RULE, IssueType.NOT_SUPPORTED})
