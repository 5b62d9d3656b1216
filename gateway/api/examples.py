"""Examples for the OpenAPI document: a request body for each operation that takes one and an answer
for each documented status. Made with the gateway's own builders and renderers where it has them
(the message builder, `render_task`, the CodeSystem, the CapabilityStatement, the errors' own
constructors), so an example says what the gateway really sends. Synthetic data only; fixed ids, so
the document stays the same from one export to the next."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from fhir_profiles.codes import HOMECARE_STATUS_SYSTEM
from fhir_profiles.identifiers import ODS_SYSTEM, ORDER_ITEM_NUMBER_SYSTEM, PRESCRIPTION_ORDER_NUMBER_SYSTEM
from fhir_profiles.outcome import (
    ErrorCode,
    Issue,
    IssueType,
    OperationOutcomeError,
    operation_outcome,
    success_outcome,
)
from gateway.domain.access import missing_scope_error
from gateway.domain.reads import item_not_found
from gateway.domain.status import code_system
from gateway.domain.tasks import render_task
from gateway.store.items import ItemView

BASE = "https://homecare-gateway.example.nhs.uk"
ITEM_ID = "0b5c1f3e-8a51-4c1e-9d37-6f0f2a1c7e42"
PRESCRIPTION_ID = "5d2e8c7a-31f4-4b8e-a0c2-9e6b1d4f7a10"
DISPENSE_ID = "c7a4e2d1-6b3f-4e8a-9f12-3d5c7b9e1a24"
SUBSCRIPTION_ID = "9e1f7b3c-2d4a-4c6e-8b5f-1a3c5e7d9b02"
COMMUNICATION_ID = "4f6a8c1e-3b5d-4e7f-9a2c-6d8e0f1b3c57"


def _order() -> dict[str, Any]:
    return PrescriptionMessageBuilder(seed=2026).build(items=1)


ORDER = _order()
_REQUEST = next(e["resource"] for e in ORDER["entry"] if e["resource"]["resourceType"] == "MedicationRequest")
SHORT_FORM_ID = _REQUEST["groupIdentifier"]["value"]
ITEM_IDENTIFIER = _REQUEST["identifier"][0]["value"]
NHS_NUMBER = next(e["resource"] for e in ORDER["entry"] if e["resource"]["resourceType"] == "Patient")[
    "identifier"
][0]["value"]
CANCELLATION = build_cancellation(ORDER, rng=random.Random(2026))  # noqa: S311  (fixed example ids)
_WHEN = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def outcome(error: OperationOutcomeError) -> dict[str, Any]:
    return operation_outcome(error.issues)


def _issue(
    status: int, kind: IssueType, code: ErrorCode, text: str, where: str | None = None
) -> dict[str, Any]:
    return outcome(OperationOutcomeError(status, [Issue(kind, code, text, where)]))


TASK = render_task(
    ItemView(
        item_id=ITEM_ID,
        item_identifier=ITEM_IDENTIFIER,
        prescription_id=PRESCRIPTION_ID,
        short_form_id=SHORT_FORM_ID,
        tenant_ods="RBA",
        provider_ods="VNCEL",
        nhs_number=NHS_NUMBER,
        status="accepted",
        version=3,
        last_modified=_WHEN,
        updated_at=_WHEN,
        created_at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        prescription_status="accepted",
        partial=False,
        resume_status=None,
        medicine=None,
    )
)

STATUS_REPORT = {
    "resourceType": "Task",
    "status": "in-progress",
    "intent": "order",
    "basedOn": [{"identifier": {"system": PRESCRIPTION_ORDER_NUMBER_SYSTEM, "value": SHORT_FORM_ID}}],
    "focus": {"identifier": {"system": ORDER_ITEM_NUMBER_SYSTEM, "value": ITEM_IDENTIFIER}},
    "businessStatus": {"coding": [{"system": HOMECARE_STATUS_SYSTEM, "code": "accepted"}]},
    "lastModified": "2026-11-23T10:15:00Z",
    "owner": {"identifier": {"system": ODS_SYSTEM, "value": "VNCEL"}},
}

TRANSACTION = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"resource": STATUS_REPORT, "request": {"method": "POST", "url": "Task"}},
        {
            "resource": {**STATUS_REPORT, "lastModified": "2026-11-23T14:02:00Z"}
            | {"businessStatus": {"coding": [{"system": HOMECARE_STATUS_SYSTEM, "code": "in-preparation"}]}},
            "request": {"method": "PUT", "url": f"Task/{ITEM_ID}"},
        },
    ],
}

TRANSACTION_RESPONSE = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [
        {
            "resource": TASK,
            "response": {"status": "200 OK", "location": f"Task/{ITEM_ID}/_history/3", "etag": 'W/"3"'},
        }
    ],
}


def searchset(*resources: dict[str, Any], self_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


HISTORY = {
    "resourceType": "Bundle",
    "type": "history",
    "total": 1,
    "entry": [
        {
            "fullUrl": f"{BASE}/fhir/Task/{ITEM_ID}/_history/1",
            "resource": TASK,
            "request": {"method": "PUT", "url": f"Task/{ITEM_ID}"},
            "response": {"status": "200", "lastModified": "2026-11-23T10:15:00Z"},
        }
    ],
}

DISPENSE = {
    "resourceType": "MedicationDispense",
    "id": DISPENSE_ID,
    "status": "completed",
    "medicationCodeableConcept": {"text": "Adalimumab 40mg/0.4ml solution for injection pre-filled pens"},
    "authorizingPrescription": [{"reference": f"MedicationRequest/{ITEM_ID}"}],
    "whenHandedOver": "2026-11-24T09:30:00Z",
}

QUESTION = {
    "resourceType": "Communication",
    "status": "completed",
    "about": [{"reference": f"Task/{ITEM_ID}"}],
    "payload": [{"contentString": "Dose confirmed as prescribed"}],
}
ANSWER = {
    **QUESTION,
    "id": COMMUNICATION_ID,
    "sent": "2026-11-23T11:00:00Z",
    "sender": {"identifier": {"system": ODS_SYSTEM, "value": "RBA"}, "display": "trust"},
}

SUBSCRIPTION_REQUEST = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "Homecare status for the pharmacy dashboard",
    "criteria": "Task?owner=VNCEL&business-status=dispensed,delivered,delivery-failed",
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://ehr.trust.example.nhs.uk/homecare/notifications",
        "payload": "application/fhir+json",
        "header": ["Authorization: Bearer subscriber-token"],
    },
}
SUBSCRIPTION = {
    **SUBSCRIPTION_REQUEST,
    "id": SUBSCRIPTION_ID,
    "meta": {"lastUpdated": "2026-11-23T09:00:00Z"},
    "status": "active",
    "channel": {**SUBSCRIPTION_REQUEST["channel"], "header": ["Authorization: [redacted]"]},  # type: ignore[dict-item]
}

ACCEPTED = success_outcome(
    f"Prescription {SHORT_FORM_ID} accepted as {PRESCRIPTION_ID}; line items: MedicationRequest/{ITEM_ID}"
)
CANCEL_WAITING = success_outcome(
    "Cancellation requested from the provider; its answer comes through the items' Tasks"
)
VALID = success_outcome(
    "Valid prescription-order message: $process-message would take it up; nothing was stored"
)
INVALID = _issue(
    400,
    IssueType.VALUE,
    ErrorCode.INVALID_CHECK_DIGIT,
    "NHS number fails its Modulus 11 check",
    "Bundle.entry[2].resource.identifier[0].value",
)

# One answer for each error status, where an operation has nothing more particular to say.
ERRORS: dict[int, dict[str, Any]] = {
    400: INVALID,
    401: _issue(
        401,
        IssueType.LOGIN,
        ErrorCode.ACCESS_DENIED,
        "A bearer access token is required (Authorization: Bearer ...)",
    ),
    403: outcome(missing_scope_error(["system/Task.rs"])),
    404: outcome(item_not_found()),
    409: _issue(
        409,
        IssueType.CONFLICT,
        ErrorCode.DUPLICATE_REJECTED,
        "A message with this Bundle.identifier was already accepted with other content",
        "Bundle.identifier",
    ),
    413: _issue(
        413,
        IssueType.TOO_LONG,
        ErrorCode.PAYLOAD_TOO_LARGE,
        "The body is larger than this gateway accepts (1048576 bytes)",
    ),
    415: _issue(
        415,
        IssueType.NOT_SUPPORTED,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        "Send FHIR JSON with Content-Type application/fhir+json (or application/json)",
    ),
    422: _issue(
        422,
        IssueType.BUSINESS_RULE,
        ErrorCode.NOT_HOMECARE_PRESCRIPTION,
        "This gateway takes homecare prescriptions only (prescription type 12xx), not 0101",
        "Bundle.entry[1].resource.extension[0].valueCoding.code",
    ),
    429: _issue(
        429,
        IssueType.THROTTLED,
        ErrorCode.TOO_MANY_REQUESTS,
        "Too many requests from this client: retry after 30 seconds",
    ),
    503: _issue(
        503,
        IssueType.TRANSIENT,
        ErrorCode.SERVER_ERROR,
        "Not ready: the database does not answer; try again shortly",
    ),
}

SENDER_REFUSED = _issue(
    403,
    IssueType.FORBIDDEN,
    ErrorCode.ACCESS_DENIED,
    "The message's sender (MessageHeader.sender) is not the organisation this client acts for",
    "Bundle.entry[0].resource.sender.identifier.value",
)
ILLEGAL_MOVE = _issue(
    409,
    IssueType.BUSINESS_RULE,
    ErrorCode.INVALID_VALUE,
    "The item is 'delivered' and cannot move to 'accepted'",
    "Task.businessStatus",
)
SEARCH_REFUSED = _issue(
    400,
    IssueType.NOT_SUPPORTED,
    ErrorCode.INVALID_VALUE,
    "Search parameter 'status' is not supported; use _count, _lastUpdated, _page_token, _sort, "
    "based-on:identifier, business-status, focus:identifier, owner, patient:identifier, requester",
    "status",
)


def codesystem() -> dict[str, Any]:
    return code_system()


MEASURE_REPORT = {
    "resourceType": "MeasureReport",
    "status": "complete",
    "type": "summary",
    "measure": f"{BASE}/fhir/Measure/on-time-delivery",
    "subject": {"identifier": {"system": ODS_SYSTEM, "value": "VNCEL"}},
    "period": {"start": "2026-10-01", "end": "2026-10-31"},
    "group": [
        {
            "population": [
                {"code": {"coding": [{"code": "denominator"}]}, "count": 120},
                {"code": {"coding": [{"code": "numerator"}]}, "count": 114},
            ],
            "measureScore": {"value": 0.95},
        }
    ],
}
MEDICATION_REQUEST = {**_REQUEST, "id": ITEM_ID, "meta": {"lastUpdated": "2026-11-23T10:15:00Z"}}
TOKEN_FORM = {
    "grant_type": "client_credentials",
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": "eyJhbGciOiJFUzM4NCIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.eyJpc3MiOiJlcHItcmJhIn0.c2lnbmF0dXJl",
    "scope": "system/Task.rs",
}
TOKEN = {
    "access_token": "eyJhbGciOiJFUzM4NCIsImtpZCI6ImdhdGV3YXkta2V5In0.eyJzdWIiOiJlcHItcmJhIn0.c2lnbmF0dXJl",
    "token_type": "bearer",
    "expires_in": 300,
    "scope": "system/Task.rs",
}
JWKS = {
    "keys": [
        {
            "kty": "EC",
            "crv": "P-384",
            "kid": "gateway-key-2026-11",
            "use": "sig",
            "alg": "ES384",
            "x": "h5R0W2GBqQk1Q0B1tD9vQGgDk1R1y1oQy6nqW0yJ1nFQp7nG3Xv0hQ2P0m4a9Xk1",
            "y": "dFr6x3zJ3wq0bK8VqZ1nJm7h1sK0vY2sT5nQ0xW3cR8kP1vZ6mN4bL7jH2gF5dS9",
        }
    ]
}
