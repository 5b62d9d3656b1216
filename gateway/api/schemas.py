"""Hand-written OpenAPI schemas for FHIR bodies.

The generated schema of a FHIR Bundle is shallow (`object`); these describe the homecare message
profile closely enough for a reader, a client generator or schemathesis to build real requests.
"""

from __future__ import annotations

from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


_STRING = {"type": "string", "minLength": 1}
_CODE = {"type": "string", "pattern": r"^[^\s]+( [^\s]+)*$"}
_URI = {"type": "string", "pattern": r"^\S+$"}

FHIR_SCHEMAS: dict[str, Any] = {
    "Coding": {
        "type": "object",
        "properties": {"system": _URI, "code": _CODE, "display": _STRING},
        "additionalProperties": False,
    },
    "CodeableConcept": {
        "type": "object",
        "properties": {"coding": {"type": "array", "items": _ref("Coding")}, "text": _STRING},
        "additionalProperties": False,
    },
    "Identifier": {
        "type": "object",
        "properties": {
            "system": _URI,
            "value": _STRING,
            "extension": {"type": "array", "items": _ref("Extension")},
        },
        "additionalProperties": False,
    },
    "Reference": {
        "type": "object",
        "properties": {"reference": _STRING, "identifier": _ref("Identifier"), "display": _STRING},
        "additionalProperties": False,
    },
    "Extension": {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": _URI,
            "valueCoding": _ref("Coding"),
            "valueIdentifier": _ref("Identifier"),
            "valueString": _STRING,
        },
        "additionalProperties": False,
    },
    "ContactPoint": {
        "type": "object",
        "properties": {
            "system": {"type": "string", "enum": ["phone", "fax", "email", "pager", "url", "sms", "other"]},
            "value": _STRING,
            "use": {"type": "string", "enum": ["home", "work", "temp", "old", "mobile"]},
        },
        "additionalProperties": False,
    },
    "Address": {
        "type": "object",
        "properties": {
            "use": {"type": "string", "enum": ["home", "work", "temp", "old", "billing"]},
            "line": {"type": "array", "items": _STRING},
            "city": _STRING,
            "postalCode": _STRING,
        },
        "additionalProperties": False,
    },
    "Quantity": {
        "type": "object",
        "properties": {"value": {"type": "number"}, "unit": _STRING, "system": _URI, "code": _CODE},
        "additionalProperties": False,
    },
    "Dosage": {
        "type": "object",
        "properties": {
            "text": _STRING,
            "route": _ref("CodeableConcept"),
            "timing": {
                "type": "object",
                "properties": {
                    "repeat": {
                        "type": "object",
                        "properties": {
                            "frequency": {"type": "integer", "minimum": 1},
                            "period": {"type": "number"},
                            "periodUnit": {"type": "string", "enum": ["s", "min", "h", "d", "wk", "mo", "a"]},
                        },
                        "additionalProperties": False,
                    }
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "MessageHeader": {
        "type": "object",
        "required": ["resourceType", "eventCoding", "source"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["MessageHeader"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "eventCoding": {
                "type": "object",
                "required": ["system", "code"],
                "properties": {
                    "system": {"type": "string", "enum": ["https://fhir.nhs.uk/CodeSystem/message-event"]},
                    "code": {
                        "type": "string",
                        "enum": ["prescription-order", "prescription-order-update", "dispense-notification"],
                    },
                    "display": _STRING,
                },
                "additionalProperties": False,
            },
            "sender": {
                "type": "object",
                "required": ["identifier"],
                "properties": {
                    "identifier": {
                        "type": "object",
                        "required": ["system", "value"],
                        "properties": {
                            "system": {
                                "type": "string",
                                "enum": ["https://fhir.nhs.uk/Id/ods-organization-code"],
                            },
                            "value": {"type": "string", "pattern": "^[A-Z0-9]{3,12}$"},
                        },
                        "additionalProperties": False,
                    },
                    "reference": _STRING,
                    "display": _STRING,
                },
                "additionalProperties": False,
            },
            "source": {
                "type": "object",
                "required": ["endpoint"],
                "properties": {"endpoint": _URI, "name": _STRING},
                "additionalProperties": False,
            },
            "focus": {"type": "array", "items": _ref("Reference")},
        },
        "additionalProperties": False,
    },
    "MedicationRequest": {
        "type": "object",
        "required": ["resourceType", "status", "intent", "subject", "medicationCodeableConcept"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["MedicationRequest"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "extension": {"type": "array", "items": _ref("Extension")},
            "identifier": {"type": "array", "items": _ref("Identifier")},
            "status": {
                "type": "string",
                "enum": [
                    "active",
                    "on-hold",
                    "cancelled",
                    "completed",
                    "entered-in-error",
                    "stopped",
                    "draft",
                    "unknown",
                ],
            },
            "intent": {
                "type": "string",
                "enum": [
                    "proposal",
                    "plan",
                    "order",
                    "original-order",
                    "reflex-order",
                    "filler-order",
                    "instance-order",
                    "option",
                ],
            },
            "category": {"type": "array", "items": _ref("CodeableConcept")},
            "statusReason": _ref("CodeableConcept"),
            "medicationCodeableConcept": _ref("CodeableConcept"),
            "subject": _ref("Reference"),
            "requester": _ref("Reference"),
            "authoredOn": {"type": "string", "format": "date-time"},
            "groupIdentifier": _ref("Identifier"),
            "courseOfTherapyType": _ref("CodeableConcept"),
            "dosageInstruction": {"type": "array", "minItems": 1, "items": _ref("Dosage")},
            "dispenseRequest": {
                "type": "object",
                "properties": {
                    "performer": _ref("Reference"),
                    "quantity": _ref("Quantity"),
                    "validityPeriod": {
                        "type": "object",
                        "properties": {"start": _STRING, "end": _STRING},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
            "substitution": {
                "type": "object",
                "required": ["allowedBoolean"],
                "properties": {"allowedBoolean": {"type": "boolean"}},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "Patient": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Patient"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "identifier": {"type": "array", "items": _ref("Identifier")},
            "name": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "family": _STRING,
                        "given": {"type": "array", "items": _STRING},
                        "prefix": {"type": "array", "items": _STRING},
                        "use": {
                            "type": "string",
                            "enum": ["usual", "official", "temp", "nickname", "anonymous", "old", "maiden"],
                        },
                    },
                    "additionalProperties": False,
                },
            },
            "gender": {"type": "string", "enum": ["male", "female", "other", "unknown"]},
            "birthDate": {"type": "string", "format": "date"},
            "address": {"type": "array", "items": _ref("Address")},
            "telecom": {"type": "array", "items": _ref("ContactPoint")},
        },
        "additionalProperties": False,
    },
    "PractitionerRole": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["PractitionerRole"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "identifier": {"type": "array", "items": _ref("Identifier")},
            "practitioner": _ref("Reference"),
            "organization": _ref("Reference"),
            "code": {"type": "array", "items": _ref("CodeableConcept")},
            "telecom": {"type": "array", "items": _ref("ContactPoint")},
        },
        "additionalProperties": False,
    },
    "Organization": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Organization"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "identifier": {"type": "array", "items": _ref("Identifier")},
            "name": _STRING,
            "partOf": _ref("Reference"),
            "telecom": {"type": "array", "items": _ref("ContactPoint")},
        },
        "additionalProperties": False,
    },
    "BundleEntry": {
        "type": "object",
        "required": ["fullUrl", "resource"],
        "properties": {
            "fullUrl": _URI,
            # The resources the profile reads, described; any other FHIR R4 resource may travel too.
            "resource": {
                "anyOf": [
                    _ref("MessageHeader"),
                    _ref("MedicationRequest"),
                    _ref("Patient"),
                    _ref("PractitionerRole"),
                    _ref("Organization"),
                    _ref("FhirResource"),
                ]
            },
        },
        "additionalProperties": False,
    },
    "HomecareMessageBundle": {
        "description": (
            "An NHS EPS-shaped FHIR R4 message Bundle: a MessageHeader first, then 1-4 homecare "
            "MedicationRequests (prescription type 12xx) and the Patient, PractitionerRole and "
            "Organization they reference. Other FHIR R4 resources (Provenance, CommunicationRequest, "
            "List...) may travel in the Bundle too."
        ),
        "type": "object",
        "required": ["resourceType", "type", "identifier", "entry"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Bundle"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "identifier": {
                "type": "object",
                "required": ["value"],
                "properties": {"system": _URI, "value": _STRING},
                "additionalProperties": False,
            },
            "type": {"type": "string", "enum": ["message"]},
            "entry": {"type": "array", "minItems": 1, "items": _ref("BundleEntry")},
        },
        "additionalProperties": False,
    },
    "OperationOutcome": {
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
            "id": {"type": "string"},
            "issue": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
                        "code": {"type": "string"},
                        "details": {
                            "type": "object",
                            "properties": {"coding": {"type": "array", "items": _ref("Coding")}},
                        },
                        "diagnostics": {"type": "string"},
                        "expression": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "SubscriptionRequest": {
        "description": (
            "A FHIR R4 Subscription to the status of the trust's own prescriptions: status `requested`, "
            "criteria `Task` optionally with `owner` and `business-status` parameters, and a rest-hook "
            "channel to an https endpoint. `payload` application/fhir+json sends the Task; without it the "
            "body is empty. `header` lists headers the subscriber wants on every notification "
            "('Name: value'); their values are never shown again."
        ),
        "type": "object",
        "required": ["resourceType", "status", "reason", "criteria", "channel"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Subscription"]},
            "status": {"type": "string", "enum": ["requested"]},
            "reason": _STRING,
            "criteria": {"type": "string", "pattern": r"^Task(\?\S+)?$"},
            "end": {"type": "string", "format": "date-time"},
            "channel": {
                "type": "object",
                "required": ["type", "endpoint"],
                "properties": {
                    "type": {"type": "string", "enum": ["rest-hook"]},
                    "endpoint": {"type": "string", "pattern": r"^https://\S+$"},
                    "payload": {"type": "string", "enum": ["application/fhir+json"]},
                    "header": {"type": "array", "items": _STRING},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "Subscription": {
        "type": "object",
        "required": ["resourceType", "id", "status", "reason", "criteria", "channel"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Subscription"]},
            "id": {"type": "string"},
            "meta": {"type": "object", "properties": {"lastUpdated": {"type": "string"}}},
            "status": {"type": "string", "enum": ["requested", "active", "error", "off"]},
            "reason": {"type": "string"},
            "criteria": {"type": "string"},
            "end": {"type": "string"},
            "error": {"type": "string"},
            "channel": {
                "type": "object",
                "required": ["type", "endpoint"],
                "properties": {
                    "type": {"type": "string", "enum": ["rest-hook"]},
                    "endpoint": {"type": "string"},
                    "payload": {"type": "string"},
                    "header": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
    "StatusTask": {
        "description": (
            "A provider's status report for one line item, as an EPS Prescription Status Update Task: "
            "`basedOn` the short-form prescription ID, `focus` the line item identifier, `businessStatus` "
            "in the gateway's code system (https://homecare-gateway.nhs.uk/CodeSystem/homecare-status) or "
            "an EPS PSU code (https://fhir.nhs.uk/CodeSystem/task-businessStatus-nppt), `lastModified` when "
            "it happened, `owner` the calling provider. For some statuses: `statusReason` (why), `note` (a "
            "query's question), `output` (delivery window or attempt). Any other FHIR R4 Task element is "
            "checked and kept."
        ),
        "type": "object",
        "required": [
            "resourceType",
            "status",
            "intent",
            "basedOn",
            "focus",
            "businessStatus",
            "lastModified",
            "owner",
        ],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Task"]},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-\.]{1,64}$"},
            "status": {
                "type": "string",
                "enum": [
                    "draft",
                    "requested",
                    "received",
                    "accepted",
                    "rejected",
                    "ready",
                    "cancelled",
                    "in-progress",
                    "on-hold",
                    "failed",
                    "completed",
                    "entered-in-error",
                ],
            },
            "intent": {"type": "string", "enum": ["order"]},
            "basedOn": {"type": "array", "minItems": 1, "items": _ref("Reference")},
            "focus": _ref("Reference"),
            "businessStatus": _ref("CodeableConcept"),
            "lastModified": {"type": "string", "format": "date-time"},
            "owner": _ref("Reference"),
            "statusReason": _ref("CodeableConcept"),
            "note": {
                "type": "array",
                "items": {"type": "object", "required": ["text"], "properties": {"text": _STRING}},
            },
            "extension": {"type": "array", "items": _ref("Extension")},
            "output": {"type": "array", "items": {"type": "object"}},
        },
    },
    "TaskTransactionBundle": {
        "description": "Up to 50 status Tasks, applied all together or not at all: each entry POST Task, "
        "or PUT Task/{id} (the item's Task id).",
        "type": "object",
        "required": ["resourceType", "type", "entry"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Bundle"]},
            "type": {"type": "string", "enum": ["transaction"]},
            "entry": {
                "type": "array",
                "minItems": 1,
                "maxItems": 50,
                "items": {
                    "type": "object",
                    "required": ["resource", "request"],
                    "properties": {
                        "resource": _ref("StatusTask"),
                        "request": {
                            "type": "object",
                            "required": ["method", "url"],
                            "properties": {
                                "method": {"type": "string", "enum": ["POST", "PUT"]},
                                "url": {"type": "string", "pattern": r"^Task(/[A-Za-z0-9\-\.]{1,64})?$"},
                            },
                        },
                    },
                },
            },
        },
    },
    "CommunicationAnswer": {
        "description": "The trust's answer to a provider's query: `about` the item's Task, the answer as text.",
        "type": "object",
        "required": ["resourceType", "status", "about", "payload"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Communication"]},
            "status": {"type": "string", "enum": ["completed"]},
            "about": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["reference"],
                    "properties": {
                        "reference": {"type": "string", "pattern": r"^Task/[A-Za-z0-9\-\.]{1,64}$"}
                    },
                },
            },
            "payload": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["contentString"],
                    "properties": {"contentString": _STRING},
                },
            },
        },
    },
    "FhirResource": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
    },
}


def fhir_content(schema: str) -> dict[str, Any]:
    return {"application/fhir+json": {"schema": _ref(schema)}}


def fhir_body(schema: str) -> dict[str, Any]:
    """A required FHIR JSON request body (`application/fhir+json`, or `application/json`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": _ref(schema)},
                "application/json": {"schema": _ref(schema)},
            },
        }
    }


def outcome_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the error statuses a route may answer, each an OperationOutcome."""
    descriptions = {
        400: "Invalid message: every problem at once",
        401: "No valid access token",
        403: "The caller may not act for this organisation",
        202: "Accepted for later: the outcome comes through the items' Tasks",
        404: "No such resource (or not the caller's)",
        405: "Method not allowed",
        409: "Conflicts with a message or prescription already accepted",
        413: "Body larger than the configured limit",
        415: "Body is not FHIR JSON",
        422: "Valid FHIR that breaks a business rule",
        429: "Too many requests from this client or address: wait the Retry-After seconds",
        500: "Unexpected failure; nothing was stored",
        503: "Not ready",
    }
    if 401 in codes and 429 not in codes:
        codes = (*codes, 429)  # every authenticated route is rate limited (gateway/api/throttle.py)
    return {
        code: {"description": descriptions[code], "content": fhir_content("OperationOutcome")}
        for code in codes
    }
