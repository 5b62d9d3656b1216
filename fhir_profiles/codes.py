"""Code systems, extension URLs and the required-binding value sets the homecare profile enforces."""

from __future__ import annotations

from enum import StrEnum

MESSAGE_EVENT_SYSTEM = "https://fhir.nhs.uk/CodeSystem/message-event"
PRESCRIPTION_TYPE_URL = "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionType"
PRESCRIPTION_TYPE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/prescription-type"
PRESCRIPTION_ID_URL = "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionId"
COURSE_OF_THERAPY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"

EVENT_PRESCRIPTION_ORDER = "prescription-order"
EVENT_PRESCRIPTION_ORDER_UPDATE = "prescription-order-update"
EVENT_DISPENSE_NOTIFICATION = "dispense-notification"
EVENT_PRESCRIPTION_ORDER_RESPONSE = "prescription-order-response"
KNOWN_MESSAGE_EVENTS = frozenset(
    {
        EVENT_PRESCRIPTION_ORDER,
        EVENT_PRESCRIPTION_ORDER_UPDATE,
        EVENT_DISPENSE_NOTIFICATION,
        EVENT_PRESCRIPTION_ORDER_RESPONSE,
    }
)

HOMECARE_TYPE_PREFIX = "12"

# Required bindings (FHIR R4): a code outside these sets is invalid, whatever fhir.resources accepts.
BUNDLE_TYPE = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    }
)
MEDICATION_REQUEST_STATUS = frozenset(
    {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
)
MEDICATION_REQUEST_INTENT = frozenset(
    {
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
# EPS accepts acute orders and the repeat intents with their course of therapy.
EPS_ORDER_INTENTS = frozenset({"order", "original-order", "instance-order"})
REQUEST_PRIORITY = frozenset({"routine", "urgent", "asap", "stat"})
REQUEST_STATUS = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
ADMINISTRATIVE_GENDER = frozenset({"male", "female", "other", "unknown"})
IDENTIFIER_USE = frozenset({"usual", "official", "temp", "secondary", "old"})
NAME_USE = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})
CONTACT_POINT_SYSTEM = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
CONTACT_POINT_USE = frozenset({"home", "work", "temp", "old", "mobile"})
ADDRESS_USE = frozenset({"home", "work", "temp", "old", "billing"})
ADDRESS_TYPE = frozenset({"postal", "physical", "both"})
UNITS_OF_TIME = frozenset({"s", "min", "h", "d", "wk", "mo", "a"})
DAYS_OF_WEEK = frozenset({"mon", "tue", "wed", "thu", "fri", "sat", "sun"})
LIST_STATUS = frozenset({"current", "retired", "entered-in-error"})
LIST_MODE = frozenset({"working", "snapshot", "changes"})
NARRATIVE_STATUS = frozenset({"generated", "extensions", "additional", "empty"})
QUANTITY_COMPARATOR = frozenset({"<", "<=", ">=", ">"})
LINK_TYPE = frozenset({"replaced-by", "replaces", "refer", "seealso"})

# --- Status from providers (DESIGN §4, §5) -------------------------------------------------------
# Providers report per line item with PSU-style Tasks whose businessStatus uses this code system.
HOMECARE_STATUS_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status"


class HomecareStatus(StrEnum):
    """The homecare-status codes: the only list of them (the gateway's transition table uses it)."""

    RECEIVED = "received"
    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    QUERY = "query"
    IN_PREPARATION = "in-preparation"
    DISPENSED = "dispensed"
    DELIVERY_SCHEDULED = "delivery-scheduled"
    OUT_FOR_DELIVERY = "out-for-delivery"
    DELIVERED = "delivered"
    DELIVERY_FAILED = "delivery-failed"
    CANCEL_REQUESTED = "cancel-requested"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNDELIVERABLE = "undeliverable"


HOMECARE_STATUS_CODES = frozenset(status.value for status in HomecareStatus)
# Why a provider rejected, queried or failed to deliver an item (Task.statusReason, and the
# OperationOutcome details of a refused order).
STATUS_REASON_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status-reason"
# Who caused a failed delivery: patient, trust, provider or courier (an extension on the Task).
RESPONSIBLE_PARTY_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/responsible-party"
RESPONSIBLE_PARTY_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-ResponsibleParty"
# Task.output types: the agreed delivery window (valuePeriod) and the attempt number (valueInteger).
TASK_OUTPUT_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/task-output"
TASK_OUTPUT_DELIVERY_WINDOW = "delivery-window"
TASK_OUTPUT_DELIVERY_ATTEMPT = "delivery-attempt"
