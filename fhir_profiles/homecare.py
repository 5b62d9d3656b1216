"""The homecare message profiles: our own rules over an EPS-shaped message Bundle.

`validate_message` runs structural validation, the rules every message shares and those of its event
(prescription-order, prescription-order-update, dispense-notification), collects all problems at
once, and returns the typed message (`PrescriptionOrder`, `Cancellation`, `DispenseNotification`)
or the issues. Rules read the parsed JSON defensively, so they report alongside structural errors
instead of stopping at the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_profiles import codes
from fhir_profiles.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_LONG_FORM_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
    is_item_identifier,
    is_nhs_number_shaped,
    is_ods_code,
    is_short_form_id_shaped,
    is_uuid,
    is_valid_nhs_number,
    is_valid_short_form_id,
)
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, Severity
from fhir_profiles.structure import check_bundle_structure

MAX_LINE_ITEMS = 4
ITEM_IDENTIFIER_RULE = "A line item identifier is 1-64 ASCII letters, digits, '.' and '-'"


@dataclass(frozen=True, slots=True)
class LineItem:
    """One MedicationRequest of a prescription, as the trust sent it."""

    entry_index: int
    item_identifier: str
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PrescriptionOrder:
    """A validated homecare prescription-order message."""

    bundle_identifier: str
    sender_ods: str
    short_form_id: str
    long_form_id: str
    performer_ods: str
    nhs_number: str
    prescription_type: str
    patient_deceased: bool
    items: tuple[LineItem, ...]
    # dispenseRequest.validityPeriod.end when the trust gave one (a FHIR date or dateTime).
    valid_until: str | None = None


@dataclass(frozen=True, slots=True)
class Cancellation:
    """A validated prescription-order-update: the trust cancels some or all items of a prescription."""

    bundle_identifier: str
    sender_ods: str
    short_form_id: str
    # Line item identifier -> (EPS cancellation reason code, its display).
    items: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class DispensedItem:
    short_form_id: str
    item_identifier: str
    handed_over: str | None
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DispenseNotification:
    """A validated dispense-notification from a provider: what it dispensed, item by item."""

    bundle_identifier: str
    sender_ods: str
    dispenses: tuple[DispensedItem, ...]


@dataclass(frozen=True, slots=True)
class MessageEnvelope:
    """What every message carries, whatever its event: enough to route and key it."""

    bundle_identifier: str | None
    event: str | None
    sender_ods: str | None


@dataclass(slots=True)
class ValidationResult:
    envelope: MessageEnvelope
    issues: list[Issue] = field(default_factory=list)
    order: PrescriptionOrder | None = None
    cancellation: Cancellation | None = None
    dispense: DispenseNotification | None = None

    @property
    def ok(self) -> bool:
        return not any(i.severity in (Severity.ERROR, Severity.FATAL) for i in self.issues)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _Rules:
    """Collects issues while reading one message."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.issues: list[Issue] = []
        self.entries: list[tuple[int, dict[str, Any]]] = []
        self.by_full_url: dict[str, tuple[int, dict[str, Any]]] = {}
        self.by_relative: dict[str, tuple[int, dict[str, Any]]] = {}
        # One pass over the entries (this runs for every message).
        for index, item in enumerate(_list(document.get("entry"))):
            entry = _dict(item)
            resource = _dict(entry.get("resource"))
            self.entries.append((index, resource))
            full_url = _str(entry.get("fullUrl"))
            if full_url:
                self.by_full_url[full_url] = (index, resource)
            resource_type, resource_id = _str(resource.get("resourceType")), _str(resource.get("id"))
            if resource_type and resource_id:
                self.by_relative[f"{resource_type}/{resource_id}"] = (index, resource)

    def add(
        self,
        code: IssueType,
        detail: ErrorCode,
        diagnostics: str,
        expression: str | None,
    ) -> None:
        self.issues.append(Issue(code, detail, diagnostics, expression))

    def missing(self, expression: str, what: str) -> None:
        self.add(IssueType.REQUIRED, ErrorCode.MISSING_FIELD, f"{what} is required", expression)

    def invalid(self, expression: str, diagnostics: str) -> None:
        self.add(IssueType.VALUE, ErrorCode.INVALID_VALUE, diagnostics, expression)

    def resolve(self, reference: Any) -> tuple[int, dict[str, Any]] | None:
        target = _str(_dict(reference).get("reference"))
        if target is None:
            return None
        return self.by_full_url.get(target) or self.by_relative.get(target)


def _valid_code(value: Any, allowed: frozenset[str]) -> bool:
    """Whether a code of a required binding is one of its codes. The structural check reports any
    other value at its place (the strict models hold the same value sets), so a rule only needs to
    know whether to go on."""
    return isinstance(value, str) and value in allowed


def read_envelope(document: Any) -> MessageEnvelope:
    """The identifier, event and sender of a message, read defensively."""
    if not isinstance(document, dict):
        return MessageEnvelope(None, None, None)
    header = _dict(_dict(next(iter(_list(document.get("entry"))), None)).get("resource"))
    if header.get("resourceType") != "MessageHeader":
        header = {}
    sender = _dict(_dict(header.get("sender")).get("identifier"))
    return MessageEnvelope(
        bundle_identifier=_str(_dict(document.get("identifier")).get("value")),
        event=_str(_dict(header.get("eventCoding")).get("code")),
        sender_ods=_str(sender.get("value")) if sender.get("system") == ODS_SYSTEM else None,
    )


def validate_message(document: Any, raw: bytes | None = None) -> ValidationResult:
    """Structure and message-level rules shared by every event, then the event's own profile.

    `raw`, the body the document was parsed from, is accepted from callers that hold it; no rule
    needs it now that only the references the gateway follows must resolve.
    """
    result = ValidationResult(envelope=read_envelope(document))
    result.issues.extend(check_bundle_structure(document, raw))
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return result
    rules = _Rules(document)
    _check_bundle(rules)
    event = _check_message_header(rules)
    if event == codes.EVENT_PRESCRIPTION_ORDER:
        result.order = _check_prescription_order(rules, result.envelope)
    elif event == codes.EVENT_PRESCRIPTION_ORDER_UPDATE:
        result.cancellation = _check_cancellation(rules, result.envelope)
    elif event == codes.EVENT_DISPENSE_NOTIFICATION:
        result.dispense = _check_dispense_notification(rules, result.envelope)
    elif event in codes.KNOWN_MESSAGE_EVENTS:
        rules.add(
            IssueType.NOT_SUPPORTED,
            ErrorCode.UNSUPPORTED_MESSAGE_EVENT,
            f"Message event '{event}' is not one a homecare gateway receives; send prescription-order, "
            "prescription-order-update or dispense-notification",
            "Bundle.entry[0].resource.eventCoding.code",
        )
    if event == codes.EVENT_PRESCRIPTION_ORDER:
        _check_references(rules)
    # A code the structural check already refused is not reported twice.
    located = {issue.expression for issue in result.issues}
    result.issues.extend(issue for issue in rules.issues if issue.expression not in located)
    if not result.ok:
        result.order = None
        result.cancellation = None
        result.dispense = None
    return result


def _check_bundle(rules: _Rules) -> None:
    document = rules.document
    bundle_type = document.get("type")
    if _valid_code(bundle_type, codes.BUNDLE_TYPE) and bundle_type != "message":
        rules.invalid("Bundle.type", f"Bundle.type must be 'message', not '{bundle_type}'")
    identifier = _dict(document.get("identifier"))
    if not _str(identifier.get("value")):
        rules.missing("Bundle.identifier.value", "Bundle.identifier (the message's unique identifier)")
    if not _list(document.get("entry")):
        rules.add(
            IssueType.VALUE,
            ErrorCode.MISSING_FIELD,
            "ResourceType Bundle must contain 'entry' field",
            "Bundle.entry",
        )


def _check_message_header(rules: _Rules) -> str | None:
    if not rules.entries:
        return None
    first_index, header = rules.entries[0]
    if header.get("resourceType") != "MessageHeader":
        rules.add(
            IssueType.STRUCTURE,
            ErrorCode.INVALID_VALUE,
            "The first entry of a message Bundle must be its MessageHeader",
            "Bundle.entry[0].resource",
        )
        return None
    base = f"Bundle.entry[{first_index}].resource"
    event = _dict(header.get("eventCoding"))
    code = _str(event.get("code"))
    if code is None:
        rules.missing(f"{base}.eventCoding.code", "MessageHeader.eventCoding.code")
    elif event.get("system") != codes.MESSAGE_EVENT_SYSTEM:
        rules.invalid(
            f"{base}.eventCoding.system",
            f"MessageHeader.eventCoding.system must be {codes.MESSAGE_EVENT_SYSTEM}",
        )
        code = None
    elif code not in codes.KNOWN_MESSAGE_EVENTS:
        rules.invalid(f"{base}.eventCoding.code", f"'{code[:64]}' is not a message event this gateway knows")
        code = None
    sender = _dict(_dict(header.get("sender")).get("identifier"))
    if not _str(sender.get("value")):
        rules.missing(
            f"{base}.sender.identifier.value",
            "MessageHeader.sender.identifier (the sending trust's ODS code)",
        )
    elif sender.get("system") != ODS_SYSTEM:
        rules.invalid(
            f"{base}.sender.identifier.system", f"The sender must be identified by an ODS code ({ODS_SYSTEM})"
        )
    elif not is_ods_code(sender["value"]):
        rules.invalid(f"{base}.sender.identifier.value", "The sender's ODS code is not a valid ODS code")
    return code


def _extension(resource: dict[str, Any], url: str) -> dict[str, Any]:
    for extension in _list(resource.get("extension")):
        if _dict(extension).get("url") == url:
            return _dict(extension)
    return {}


def _check_prescription_order(rules: _Rules, envelope: MessageEnvelope) -> PrescriptionOrder | None:
    requests = [(i, r) for i, r in rules.entries if r.get("resourceType") == "MedicationRequest"]
    if not requests:
        rules.missing("Bundle.entry", "At least one MedicationRequest")
        return None
    if len(requests) > MAX_LINE_ITEMS:
        rules.invalid(
            f"Bundle.entry[{requests[MAX_LINE_ITEMS][0]}].resource",
            f"A prescription holds at most {MAX_LINE_ITEMS} MedicationRequests; "
            f"this message has {len(requests)}",
        )

    items: list[LineItem] = []
    seen_item_ids: dict[str, str] = {}
    shared: dict[str, list[tuple[str, Any]]] = {}
    for index, request in requests:
        base = f"Bundle.entry[{index}].resource"
        item_id = _check_line_item(rules, request, base, seen_item_ids)
        for name, value in _shared_values(rules, request, base):
            shared.setdefault(name, []).append((base, value))
        if item_id is not None:
            items.append(LineItem(index, item_id, request))

    _check_shared(rules, shared)
    _check_course_of_therapy(rules, [r for _, r in requests])

    short_form = _first(shared.get("groupIdentifier.value"))
    long_form = _first(shared.get("groupIdentifier.prescriptionId"))
    performer = _first(shared.get("dispenseRequest.performer"))
    prescription_type = _first(shared.get("prescriptionType"))
    patient = _check_patient(rules, requests)
    if prescription_type is not None and not str(prescription_type).startswith(codes.HOMECARE_TYPE_PREFIX):
        rules.add(
            IssueType.BUSINESS_RULE,
            ErrorCode.NOT_HOMECARE_PRESCRIPTION,
            f"This gateway takes homecare prescriptions only (prescription type 12xx); type "
            f"'{str(prescription_type)[:16]}' is not a homecare prescription type",
            f"{shared['prescriptionType'][0][0]}.extension('{codes.PRESCRIPTION_TYPE_URL}').valueCoding.code",
        )
    # Each value read is None, and each item left out, only with its issue recorded. The envelope's
    # fields are None only when _check_bundle or _check_message_header said so (their checks narrow
    # the types); the patient is None also when the structural check refused its reference.
    if rules.issues or envelope.bundle_identifier is None or envelope.sender_ods is None or patient is None:
        return None
    nhs_number, deceased = patient
    return PrescriptionOrder(
        bundle_identifier=envelope.bundle_identifier,
        sender_ods=envelope.sender_ods,
        short_form_id=str(short_form),
        long_form_id=str(long_form),
        performer_ods=str(performer),
        nhs_number=nhs_number,
        prescription_type=str(prescription_type),
        patient_deceased=deceased,
        items=tuple(items),
        valid_until=_str(_dict(_first(shared.get("dispenseRequest.validityPeriod"))).get("end")),
    )


def _first(values: list[tuple[str, Any]] | None) -> Any:
    return values[0][1] if values else None


def _check_line_item(
    rules: _Rules, request: dict[str, Any], base: str, seen_item_ids: dict[str, str]
) -> str | None:
    status = request.get("status")
    if _valid_code(status, codes.MEDICATION_REQUEST_STATUS) and status != "active":
        rules.invalid(
            f"{base}.status",
            f"MedicationRequest.status must be 'active' in a prescription order, not '{status}'",
        )
    intent = request.get("intent")
    if _valid_code(intent, codes.MEDICATION_REQUEST_INTENT) and intent not in codes.EPS_ORDER_INTENTS:
        rules.invalid(
            f"{base}.intent", "MedicationRequest.intent must be order, original-order or instance-order."
        )
    if not _list(request.get("dosageInstruction")):
        rules.missing(f"{base}.dosageInstruction", "MedicationRequest.dosageInstruction")

    item_ids = [
        _str(_dict(identifier).get("value"))
        for identifier in _list(request.get("identifier"))
        if _dict(identifier).get("system") == ORDER_ITEM_NUMBER_SYSTEM
    ]
    item_id = item_ids[0] if item_ids else None
    if item_id is None:
        rules.missing(
            f"{base}.identifier",
            f"A line item identifier (system {ORDER_ITEM_NUMBER_SYSTEM})",
        )
    elif not is_item_identifier(item_id):
        rules.invalid(f"{base}.identifier", ITEM_IDENTIFIER_RULE)
        item_id = None
    elif item_id in seen_item_ids:
        rules.add(
            IssueType.DUPLICATE,
            ErrorCode.INVALID_VALUE,
            f"Line item identifier is used twice in this prescription (first at {seen_item_ids[item_id]})",
            f"{base}.identifier",
        )
        item_id = None
    else:
        seen_item_ids[item_id] = base
    return item_id


def _shared_values(rules: _Rules, request: dict[str, Any], base: str) -> list[tuple[str, Any]]:
    """The values every line item must agree on, checked for shape as they are read."""
    return [
        *_prescription_ids(rules, request, base),
        *_prescription_type(rules, request, base),
        *_performer(rules, request, base),
        *_parties_and_dates(rules, request, base),
    ]


def _prescription_ids(rules: _Rules, request: dict[str, Any], base: str) -> list[tuple[str, Any]]:
    """The short-form prescription ID (with its check character) and the long-form UUID."""
    values: list[tuple[str, Any]] = []
    group = _dict(request.get("groupIdentifier"))
    short_form = _str(group.get("value"))
    if not group:
        rules.missing(f"{base}.groupIdentifier", "MedicationRequest.groupIdentifier (the prescription ID)")
    elif short_form is None:
        rules.missing(f"{base}.groupIdentifier.value", "The short-form prescription ID")
    elif group.get("system") != PRESCRIPTION_ORDER_NUMBER_SYSTEM:
        rules.invalid(
            f"{base}.groupIdentifier.system",
            f"groupIdentifier.system must be {PRESCRIPTION_ORDER_NUMBER_SYSTEM}",
        )
    elif not is_short_form_id_shaped(short_form):
        rules.invalid(
            f"{base}.groupIdentifier.value", "The prescription ID must have the form XXXXXX-XXXXXX-XXXXXC"
        )
    elif not is_valid_short_form_id(short_form):
        rules.add(
            IssueType.PROCESSING,
            ErrorCode.FAILURE_TO_PROCESS_MESSAGE,
            "Unable to process message. Information missing or invalid - prescriptionID has invalid checksum",
            f"{base}.groupIdentifier.value",
        )
    else:
        values.append(("groupIdentifier.value", short_form))

    if group:
        long_form_ext = _extension(group, codes.PRESCRIPTION_ID_URL)
        long_form_id = _dict(long_form_ext.get("valueIdentifier"))
        long_form = _str(long_form_id.get("value"))
        where = f"{base}.groupIdentifier.extension('{codes.PRESCRIPTION_ID_URL}')"
        if long_form is None:
            rules.missing(where, "The long-form prescription ID (a UUID)")
        elif long_form_id.get("system") != PRESCRIPTION_LONG_FORM_SYSTEM or not is_uuid(long_form):
            rules.invalid(
                f"{where}.valueIdentifier",
                f"The long-form prescription ID must be a UUID in {PRESCRIPTION_LONG_FORM_SYSTEM}",
            )
        else:
            values.append(("groupIdentifier.prescriptionId", long_form.lower()))
    return values


def _prescription_type(rules: _Rules, request: dict[str, Any], base: str) -> list[tuple[str, Any]]:
    type_coding = _dict(_extension(request, codes.PRESCRIPTION_TYPE_URL).get("valueCoding"))
    type_code = _str(type_coding.get("code"))
    if type_code is None:
        rules.missing(f"{base}.extension('{codes.PRESCRIPTION_TYPE_URL}')", "The prescription type extension")
    elif type_coding.get("system") != codes.PRESCRIPTION_TYPE_SYSTEM:
        rules.invalid(
            f"{base}.extension('{codes.PRESCRIPTION_TYPE_URL}').valueCoding.system",
            f"The prescription type must come from {codes.PRESCRIPTION_TYPE_SYSTEM}",
        )
    else:
        return [("prescriptionType", type_code)]
    return []


def _performer(rules: _Rules, request: dict[str, Any], base: str) -> list[tuple[str, Any]]:
    performer = _dict(_dict(_dict(request.get("dispenseRequest")).get("performer")).get("identifier"))
    performer_ods = _str(performer.get("value"))
    if performer_ods is None:
        rules.missing(
            f"{base}.dispenseRequest.performer.identifier",
            "dispenseRequest.performer (the homecare provider's ODS code)",
        )
    elif performer.get("system") != ODS_SYSTEM or not is_ods_code(performer_ods):
        rules.invalid(
            f"{base}.dispenseRequest.performer.identifier",
            f"The homecare provider must be identified by a valid ODS code ({ODS_SYSTEM})",
        )
    else:
        return [("dispenseRequest.performer", performer_ods)]
    return []


def _parties_and_dates(rules: _Rules, request: dict[str, Any], base: str) -> list[tuple[str, Any]]:
    values: list[tuple[str, Any]] = []
    subject = rules.resolve(request.get("subject"))
    if subject is not None:
        values.append(("subject", subject[0]))
    requester = request.get("requester")
    if not _dict(requester):
        rules.missing(f"{base}.requester", "MedicationRequest.requester")
    else:
        resolved = rules.resolve(requester)
        values.append(("requester", resolved[0] if resolved else _dict(requester).get("reference")))
    for name in ("authoredOn", "category", "intent", "status"):
        if name in request:
            values.append((name, request[name]))
    validity = _dict(request.get("dispenseRequest")).get("validityPeriod")
    if validity is not None:
        values.append(("dispenseRequest.validityPeriod", validity))
    return values


def _check_shared(rules: _Rules, shared: dict[str, list[tuple[str, Any]]]) -> None:
    for name, values in shared.items():
        first_path, first = values[0]
        for path, value in values[1:]:
            if value != first:
                rules.invalid(
                    f"{path}.{name}",
                    f"Every line item must have the same {name} (it differs from {first_path})",
                )


def _check_course_of_therapy(rules: _Rules, requests: list[dict[str, Any]]) -> None:
    kinds = set()
    for request in requests:
        for coding in _list(_dict(request.get("courseOfTherapyType")).get("coding")):
            if _str(_dict(coding).get("code")):
                kinds.add(coding["code"])
    if len(kinds) > 1 and kinds != {"acute", "continuous"}:
        rules.add(
            IssueType.INVALID,
            ErrorCode.INVALID_VALUE,
            "Course of therapy type must either match for all MedicationRequests or be a mixture of "
            "'acute' and 'continuous'.",
            "MedicationRequest.courseOfTherapyType.coding",
        )


def _check_patient(rules: _Rules, requests: list[tuple[int, dict[str, Any]]]) -> tuple[str, bool] | None:
    """The one patient of the prescription: NHS number checked, deceased flag read."""
    index, request = requests[0]
    base = f"Bundle.entry[{index}].resource.subject"
    if not _dict(request.get("subject")):
        return None
    resolved = rules.resolve(request.get("subject"))
    if resolved is None:
        return None
    patient_index, patient = resolved
    patient_path = f"Bundle.entry[{patient_index}].resource"
    if patient.get("resourceType") != "Patient":
        rules.invalid(base, "MedicationRequest.subject must reference the Patient")
        return None
    nhs_numbers = [
        (position, _dict(identifier).get("value"))
        for position, identifier in enumerate(_list(patient.get("identifier")))
        if _dict(identifier).get("system") == NHS_NUMBER_SYSTEM
    ]
    if not nhs_numbers:
        rules.missing(f"{patient_path}.identifier", f"The patient's NHS number (system {NHS_NUMBER_SYSTEM})")
        return None
    position, nhs_number = nhs_numbers[0]
    where = f"{patient_path}.identifier[{position}].value"
    if not isinstance(nhs_number, str) or not is_nhs_number_shaped(nhs_number):
        rules.invalid(where, "An NHS number is 10 digits")
        return None
    if not is_valid_nhs_number(nhs_number):
        rules.add(
            IssueType.VALUE, ErrorCode.INVALID_CHECK_DIGIT, "The NHS number fails its Modulus 11 check", where
        )
        return None
    deceased = patient.get("deceasedBoolean") is True or _str(patient.get("deceasedDateTime")) is not None
    if deceased:
        rules.add(
            IssueType.BUSINESS_RULE,
            ErrorCode.PATIENT_DECEASED,
            "The patient is recorded as deceased; a homecare prescription cannot be supplied",
            f"{patient_path}.deceased",
        )
    return nhs_number, deceased


# The references the gateway follows (by element name): only these must resolve inside the Bundle.
# Others, such as a Provenance's target list, are kept as received: EPS accepts a signed order whose
# Provenance names a resource the message leaves out, and the signature was made over those bytes.
_FOLLOWED_MEDICATION_REQUEST_REFERENCES = ("subject", "requester", "performer")
_FOLLOWED_PRACTITIONER_ROLE_REFERENCES = ("practitioner", "organization")


def _check_references(rules: _Rules) -> None:
    """The references the gateway follows resolve to entries of the Bundle (by fullUrl, or Type/id):
    MessageHeader.focus, each MedicationRequest's subject, requester and performer, and the
    practitioner and organization of the PractitionerRoles those requesters name."""
    # Only a prescription-order gets here: its event was read from the MessageHeader, the first entry.
    index, header = rules.entries[0]
    for position, focus in enumerate(_list(header.get("focus"))):
        _check_followed(rules, focus, f"Bundle.entry[{index}].resource.focus[{position}]")
    for index, resource in rules.entries:
        if resource.get("resourceType") != "MedicationRequest":
            continue
        for name in _FOLLOWED_MEDICATION_REQUEST_REFERENCES:
            _check_followed(rules, resource.get(name), f"Bundle.entry[{index}].resource.{name}")
        role = rules.resolve(resource.get("requester"))
        if role is not None and role[1].get("resourceType") == "PractitionerRole":
            for name in _FOLLOWED_PRACTITIONER_ROLE_REFERENCES:
                _check_followed(rules, role[1].get(name), f"Bundle.entry[{role[0]}].resource.{name}")


def _check_followed(rules: _Rules, reference: Any, expression: str) -> None:
    target = _str(_dict(reference).get("reference"))
    if target is None or not _is_local_reference(target) or rules.resolve(reference) is not None:
        return
    where = f"{expression}.reference"
    if any(issue.expression == where for issue in rules.issues):
        return  # a PractitionerRole shared by every item is reported once
    rules.add(
        IssueType.VALUE,
        ErrorCode.INVALID_VALUE,
        "Reference does not resolve to any entry of the Bundle (references resolve by fullUrl)",
        where,
    )


def _is_local_reference(target: str) -> bool:
    if target.startswith(("urn:uuid:", "urn:oid:")):
        return True
    return target.count("/") == 1 and not target.startswith(("http:", "https:", "#"))


CANCELLATION_REASON_SYSTEM = "https://fhir.nhs.uk/CodeSystem/medicationrequest-status-reason"
NON_DISPENSING_REASON_URL = (
    "https://fhir.nhs.uk/StructureDefinition/Extension-DM-PrescriptionNonDispensingReason"
)


def _check_cancellation(rules: _Rules, envelope: MessageEnvelope) -> Cancellation | None:
    """One MedicationRequest per item to cancel, status cancelled, with an EPS cancellation reason."""
    requests = [(i, r) for i, r in rules.entries if r.get("resourceType") == "MedicationRequest"]
    if not requests:
        rules.missing("Bundle.entry", "A MedicationRequest for each line item to cancel")
        return None
    if len(requests) > MAX_LINE_ITEMS:
        rules.invalid("Bundle.entry", f"A prescription has at most {MAX_LINE_ITEMS} items to cancel")
    short_forms: set[str] = set()
    items: list[tuple[str, str, str]] = []
    prescription_type = None
    for index, request in requests:
        base = f"Bundle.entry[{index}].resource"
        if request.get("status") != "cancelled":
            rules.invalid(f"{base}.status", "A cancellation's MedicationRequest has status 'cancelled'")
        reason = next(
            (
                _dict(coding)
                for coding in _list(_dict(request.get("statusReason")).get("coding"))
                if _dict(coding).get("system") == CANCELLATION_REASON_SYSTEM
                and _str(_dict(coding).get("code"))
            ),
            None,
        )
        if reason is None:
            rules.missing(f"{base}.statusReason", f"The cancellation reason ({CANCELLATION_REASON_SYSTEM})")
        short_form = _str(_dict(request.get("groupIdentifier")).get("value"))
        if short_form is None or not is_valid_short_form_id(short_form):
            rules.invalid(f"{base}.groupIdentifier.value", "A valid short-form prescription ID is required")
        else:
            short_forms.add(short_form)
        item_id = next(
            (
                _str(_dict(identifier).get("value"))
                for identifier in _list(request.get("identifier"))
                if _dict(identifier).get("system") == ORDER_ITEM_NUMBER_SYSTEM
            ),
            None,
        )
        if item_id is None:
            rules.missing(f"{base}.identifier", f"The line item identifier ({ORDER_ITEM_NUMBER_SYSTEM})")
        elif not is_item_identifier(item_id):
            rules.invalid(f"{base}.identifier", ITEM_IDENTIFIER_RULE)
        elif reason is not None:
            items.append((item_id, str(reason["code"]), str(reason.get("display") or "")))
        type_code = _str(
            _dict(_extension(request, codes.PRESCRIPTION_TYPE_URL).get("valueCoding")).get("code")
        )
        prescription_type = prescription_type or type_code
    if len(short_forms) > 1:
        rules.invalid("Bundle.entry", "Every item to cancel must belong to the same prescription")
    if prescription_type is not None and not prescription_type.startswith(codes.HOMECARE_TYPE_PREFIX):
        rules.add(
            IssueType.BUSINESS_RULE,
            ErrorCode.NOT_HOMECARE_PRESCRIPTION,
            "This gateway takes homecare prescriptions only (prescription type 12xx)",
            f"Bundle.entry[{requests[0][0]}].resource.extension('{codes.PRESCRIPTION_TYPE_URL}')",
        )
    if (
        rules.issues
        or envelope.bundle_identifier is None
        or envelope.sender_ods is None
        or len(short_forms) != 1
    ):
        return None
    return Cancellation(envelope.bundle_identifier, envelope.sender_ods, short_forms.pop(), tuple(items))


def _check_dispense_notification(rules: _Rules, envelope: MessageEnvelope) -> DispenseNotification | None:
    """Each MedicationDispense names its item (the prescription it authorises, contained or by
    identifier); all of them agree on any non-dispensing reason, as EPS requires."""
    dispenses = [(i, r) for i, r in rules.entries if r.get("resourceType") == "MedicationDispense"]
    if not dispenses:
        rules.missing("Bundle.entry", "At least one MedicationDispense")
        return None
    found: list[DispensedItem] = []
    reasons: set[str | None] = set()
    for index, dispense in dispenses:
        base = f"Bundle.entry[{index}].resource"
        authorising = _authorising_request(dispense)
        short_form = _str(_dict(authorising.get("groupIdentifier")).get("value"))
        item_id = next(
            (
                _str(_dict(identifier).get("value"))
                for identifier in _list(authorising.get("identifier"))
                if _dict(identifier).get("system") == ORDER_ITEM_NUMBER_SYSTEM
            ),
            None,
        )
        if short_form is None or item_id is None:
            rules.missing(
                f"{base}.authorizingPrescription",
                "The authorising MedicationRequest with its prescription ID and line item identifier",
            )
            continue
        if not is_short_form_id_shaped(short_form) or not is_item_identifier(item_id):
            rules.invalid(
                f"{base}.authorizingPrescription",
                "The prescription ID must have the form XXXXXX-XXXXXX-XXXXXC. " + ITEM_IDENTIFIER_RULE,
            )
            continue
        reason = _dict(_extension(dispense, NON_DISPENSING_REASON_URL).get("valueCoding")).get("code")
        reasons.add(reason if isinstance(reason, str) else None)
        handed_over = _str(dispense.get("whenHandedOver"))
        found.append(DispensedItem(short_form, item_id, handed_over, dispense))
    if len(reasons) > 1:
        rules.add(
            IssueType.INVALID,
            ErrorCode.INVALID_VALUE,
            "Expected all MedicationDispenses to have the same value for "
            "MedicationDispense.extension:prescriptionNonDispensingReason",
            "MedicationDispense.extension:prescriptionNonDispensingReason",
        )
    if rules.issues or envelope.bundle_identifier is None or envelope.sender_ods is None:
        return None
    return DispenseNotification(envelope.bundle_identifier, envelope.sender_ods, tuple(found))


def _authorising_request(dispense: dict[str, Any]) -> dict[str, Any]:
    contained = {
        _str(resource.get("id")): resource
        for resource in (_dict(item) for item in _list(dispense.get("contained")))
        if resource.get("resourceType") == "MedicationRequest"
    }
    for reference in _list(dispense.get("authorizingPrescription")):
        target = _str(_dict(reference).get("reference"))
        if target and target.startswith("#") and target[1:] in contained:
            return contained[target[1:]]
        identifier = _dict(_dict(reference).get("identifier"))
        if identifier:
            # An identifier-only reference names the line item; the prescription comes from an extension.
            group = _dict(_extension(_dict(reference), codes.PRESCRIPTION_ID_URL).get("valueIdentifier"))
            return {"identifier": [identifier], "groupIdentifier": group}
    return {}
