"""Strict pydantic models of the FHIR R4 resources a homecare prescription message carries.

They are the fast path of structural validation: FHIR R4 cardinalities, primitive formats and JSON
types (a number is never a string here), without fhir.resources' per-field Python validators. They
cover the resources EPS messages use; anything they do not know (an element or resource type outside
this set) is decided by fhir.resources R4B instead (see `structure.py`). Tests check that these
models never accept what fhir.resources rejects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator
from pydantic import StringConstraints as Str

from fhir_profiles import codes

if TYPE_CHECKING:
    _T = TypeVar("_T")
    Opt: TypeAlias = Optional[_T]  # noqa: UP045
else:

    class Opt:
        """`Opt[X]` is `X | None` to type checkers but plain `X` to pydantic: an absent element
        defaults to None, while an explicit JSON `null` is refused, as FHIR JSON requires."""

        def __class_getitem__(cls, item: Any) -> Any:
            return item


_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"

String = Annotated[str, Str(min_length=1, max_length=1_048_576)]
Markdown = String
Code = Annotated[str, Str(pattern=r"^[^\s]+( [^\s]+)*$")]
Id = Annotated[str, Str(pattern=r"^[A-Za-z0-9\-\.]{1,64}$")]
Uri = Annotated[str, Str(pattern=r"^\S+$")]
Url = Uri
Canonical = Uri
Base64 = Annotated[str, Str(pattern=r"^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$")]
Xhtml = String
DateTime = Annotated[str, Str(pattern=rf"^{_YEAR}(-{_MONTH}(-{_DAY}(T{_TIME}{_ZONE})?)?)?$")]
Date = Annotated[str, Str(pattern=rf"^{_YEAR}(-{_MONTH}(-{_DAY})?)?$")]
Instant = Annotated[str, Str(pattern=rf"^{_YEAR}-{_MONTH}-{_DAY}T{_TIME}{_ZONE}$")]
Time = Annotated[str, Str(pattern=rf"^{_TIME}$")]
Boolean = StrictBool
Integer = Annotated[StrictInt, Field(ge=-2_147_483_648, le=2_147_483_647)]
PositiveInt = Annotated[StrictInt, Field(ge=1, le=2_147_483_647)]
UnsignedInt = Annotated[StrictInt, Field(ge=0, le=2_147_483_647)]
Decimal = StrictFloat  # strict: a JSON number (int or float), never a string or a boolean


# Required bindings: a code outside the value set is refused (fhir.resources accepts any code).
if TYPE_CHECKING:
    BundleType: TypeAlias = str
    MedicationRequestStatus: TypeAlias = str
    MedicationRequestIntent: TypeAlias = str
    RequestPriority: TypeAlias = str
    RequestStatus: TypeAlias = str
    Gender: TypeAlias = str
    IdentifierUse: TypeAlias = str
    NameUse: TypeAlias = str
    ContactPointSystem: TypeAlias = str
    ContactPointUse: TypeAlias = str
    AddressUse: TypeAlias = str
    AddressType: TypeAlias = str
    UnitsOfTime: TypeAlias = str
    DayOfWeek: TypeAlias = str
    ListStatus: TypeAlias = str
    ListMode: TypeAlias = str
    NarrativeStatus: TypeAlias = str
    QuantityComparator: TypeAlias = str
    LinkType: TypeAlias = str
else:
    BundleType = Literal[tuple(sorted(codes.BUNDLE_TYPE))]
    MedicationRequestStatus = Literal[tuple(sorted(codes.MEDICATION_REQUEST_STATUS))]
    MedicationRequestIntent = Literal[tuple(sorted(codes.MEDICATION_REQUEST_INTENT))]
    RequestPriority = Literal[tuple(sorted(codes.REQUEST_PRIORITY))]
    RequestStatus = Literal[tuple(sorted(codes.REQUEST_STATUS))]
    Gender = Literal[tuple(sorted(codes.ADMINISTRATIVE_GENDER))]
    IdentifierUse = Literal[tuple(sorted(codes.IDENTIFIER_USE))]
    NameUse = Literal[tuple(sorted(codes.NAME_USE))]
    ContactPointSystem = Literal[tuple(sorted(codes.CONTACT_POINT_SYSTEM))]
    ContactPointUse = Literal[tuple(sorted(codes.CONTACT_POINT_USE))]
    AddressUse = Literal[tuple(sorted(codes.ADDRESS_USE))]
    AddressType = Literal[tuple(sorted(codes.ADDRESS_TYPE))]
    UnitsOfTime = Literal[tuple(sorted(codes.UNITS_OF_TIME))]
    DayOfWeek = Literal[tuple(sorted(codes.DAYS_OF_WEEK))]
    ListStatus = Literal[tuple(sorted(codes.LIST_STATUS))]
    ListMode = Literal[tuple(sorted(codes.LIST_MODE))]
    NarrativeStatus = Literal[tuple(sorted(codes.NARRATIVE_STATUS))]
    QuantityComparator = Literal[tuple(sorted(codes.QUANTITY_COMPARATOR))]
    LinkType = Literal[tuple(sorted(codes.LINK_TYPE))]


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _one_of(model: BaseModel, names: frozenset[str], *, required: bool, element: str) -> None:
    """FHIR choice elements: at most one `element[x]` (exactly one when required)."""
    present = model.model_fields_set & names
    if len(present) > 1 or (required and not present):
        choices = ", ".join(sorted(names))
        if present:
            raise ValueError(f"only one of {choices} may be given for {element}[x]")
        raise ValueError(f"{element}[x] is required (one of {choices})")


class Element(Base):
    id: Opt[String] = None
    extension: Opt[list[Extension]] = None


class BackboneElement(Element):
    modifierExtension: Opt[list[Extension]] = None


class Coding(Element):
    system: Opt[Uri] = None
    version: Opt[String] = None
    code: Opt[Code] = None
    display: Opt[String] = None
    userSelected: Opt[Boolean] = None


class CodeableConcept(Element):
    coding: Opt[list[Coding]] = None
    text: Opt[String] = None


class Period(Element):
    start: Opt[DateTime] = None
    end: Opt[DateTime] = None


class Identifier(Element):
    use: Opt[IdentifierUse] = None
    type: Opt[CodeableConcept] = None
    system: Opt[Uri] = None
    value: Opt[String] = None
    period: Opt[Period] = None
    assigner: Opt[Reference] = None


class Reference(Element):
    reference: Opt[String] = None
    type: Opt[Uri] = None
    identifier: Opt[Identifier] = None
    display: Opt[String] = None


class Quantity(Element):
    value: Opt[Decimal] = None
    comparator: Opt[QuantityComparator] = None
    unit: Opt[String] = None
    system: Opt[Uri] = None
    code: Opt[Code] = None


class SimpleQuantity(Element):
    value: Opt[Decimal] = None
    unit: Opt[String] = None
    system: Opt[Uri] = None
    code: Opt[Code] = None


Duration = Quantity
Age = Quantity
Count = Quantity
Distance = Quantity


class Range(Element):
    low: Opt[SimpleQuantity] = None
    high: Opt[SimpleQuantity] = None


class Ratio(Element):
    numerator: Opt[Quantity] = None
    denominator: Opt[Quantity] = None


class HumanName(Element):
    use: Opt[NameUse] = None
    text: Opt[String] = None
    family: Opt[String] = None
    given: Opt[list[String]] = None
    prefix: Opt[list[String]] = None
    suffix: Opt[list[String]] = None
    period: Opt[Period] = None


class Address(Element):
    use: Opt[AddressUse] = None
    type: Opt[AddressType] = None
    text: Opt[String] = None
    line: Opt[list[String]] = None
    city: Opt[String] = None
    district: Opt[String] = None
    state: Opt[String] = None
    postalCode: Opt[String] = None
    country: Opt[String] = None
    period: Opt[Period] = None


class ContactPoint(Element):
    system: Opt[ContactPointSystem] = None
    value: Opt[String] = None
    use: Opt[ContactPointUse] = None
    rank: Opt[PositiveInt] = None
    period: Opt[Period] = None


class Annotation(Element):
    authorReference: Opt[Reference] = None
    authorString: Opt[String] = None
    time: Opt[DateTime] = None
    text: Markdown

    @model_validator(mode="after")
    def _author(self) -> Annotation:
        _one_of(self, frozenset({"authorReference", "authorString"}), required=False, element="author")
        return self


class Attachment(Element):
    contentType: Opt[Code] = None
    language: Opt[Code] = None
    data: Opt[Base64] = None
    url: Opt[Url] = None
    size: Opt[UnsignedInt] = None
    hash: Opt[Base64] = None
    title: Opt[String] = None
    creation: Opt[DateTime] = None


class Signature(Element):
    type: list[Coding] = Field(min_length=1)
    when: Instant
    who: Reference
    onBehalfOf: Opt[Reference] = None
    targetFormat: Opt[Code] = None
    sigFormat: Opt[Code] = None
    data: Opt[Base64] = None


class Meta(Element):
    versionId: Opt[Id] = None
    lastUpdated: Opt[Instant] = None
    source: Opt[Uri] = None
    profile: Opt[list[Canonical]] = None
    security: Opt[list[Coding]] = None
    tag: Opt[list[Coding]] = None


class Narrative(Element):
    status: NarrativeStatus
    div: Xhtml


class TimingRepeat(Element):
    boundsDuration: Opt[Duration] = None
    boundsRange: Opt[Range] = None
    boundsPeriod: Opt[Period] = None
    count: Opt[PositiveInt] = None
    countMax: Opt[PositiveInt] = None
    duration: Opt[Decimal] = None
    durationMax: Opt[Decimal] = None
    durationUnit: Opt[UnitsOfTime] = None
    frequency: Opt[PositiveInt] = None
    frequencyMax: Opt[PositiveInt] = None
    period: Opt[Decimal] = None
    periodMax: Opt[Decimal] = None
    periodUnit: Opt[UnitsOfTime] = None
    dayOfWeek: Opt[list[DayOfWeek]] = None
    timeOfDay: Opt[list[Time]] = None
    when: Opt[list[Code]] = None
    offset: Opt[UnsignedInt] = None

    @model_validator(mode="after")
    def _bounds(self) -> TimingRepeat:
        _one_of(
            self,
            frozenset({"boundsDuration", "boundsRange", "boundsPeriod"}),
            required=False,
            element="bounds",
        )
        return self


class Timing(BackboneElement):
    event: Opt[list[DateTime]] = None
    repeat: Opt[TimingRepeat] = None
    code: Opt[CodeableConcept] = None


class DoseAndRate(Element):
    type: Opt[CodeableConcept] = None
    doseRange: Opt[Range] = None
    doseQuantity: Opt[SimpleQuantity] = None
    rateRatio: Opt[Ratio] = None
    rateRange: Opt[Range] = None
    rateQuantity: Opt[SimpleQuantity] = None

    @model_validator(mode="after")
    def _choices(self) -> DoseAndRate:
        _one_of(self, frozenset({"doseRange", "doseQuantity"}), required=False, element="dose")
        _one_of(self, frozenset({"rateRatio", "rateRange", "rateQuantity"}), required=False, element="rate")
        return self


class Dosage(BackboneElement):
    sequence: Opt[Integer] = None
    text: Opt[String] = None
    additionalInstruction: Opt[list[CodeableConcept]] = None
    patientInstruction: Opt[String] = None
    timing: Opt[Timing] = None
    asNeededBoolean: Opt[Boolean] = None
    asNeededCodeableConcept: Opt[CodeableConcept] = None
    site: Opt[CodeableConcept] = None
    route: Opt[CodeableConcept] = None
    method: Opt[CodeableConcept] = None
    doseAndRate: Opt[list[DoseAndRate]] = None
    maxDosePerPeriod: Opt[Ratio] = None
    maxDosePerAdministration: Opt[SimpleQuantity] = None
    maxDosePerLifetime: Opt[SimpleQuantity] = None

    @model_validator(mode="after")
    def _as_needed(self) -> Dosage:
        _one_of(
            self,
            frozenset({"asNeededBoolean", "asNeededCodeableConcept"}),
            required=False,
            element="asNeeded",
        )
        return self


_EXTENSION_VALUES = frozenset(
    {
        "valueBase64Binary",
        "valueBoolean",
        "valueCanonical",
        "valueCode",
        "valueDate",
        "valueDateTime",
        "valueDecimal",
        "valueId",
        "valueInstant",
        "valueInteger",
        "valueMarkdown",
        "valuePositiveInt",
        "valueString",
        "valueTime",
        "valueUnsignedInt",
        "valueUri",
        "valueUrl",
        "valueAddress",
        "valueAnnotation",
        "valueAttachment",
        "valueCodeableConcept",
        "valueCoding",
        "valueContactPoint",
        "valueDuration",
        "valueHumanName",
        "valueIdentifier",
        "valuePeriod",
        "valueQuantity",
        "valueRange",
        "valueRatio",
        "valueReference",
        "valueTiming",
        "valueDosage",
    }
)


class Extension(Base):
    id: Opt[String] = None
    extension: Opt[list[Extension]] = None
    url: Uri
    valueBase64Binary: Opt[Base64] = None
    valueBoolean: Opt[Boolean] = None
    valueCanonical: Opt[Canonical] = None
    valueCode: Opt[Code] = None
    valueDate: Opt[Date] = None
    valueDateTime: Opt[DateTime] = None
    valueDecimal: Opt[Decimal] = None
    valueId: Opt[Id] = None
    valueInstant: Opt[Instant] = None
    valueInteger: Opt[Integer] = None
    valueMarkdown: Opt[Markdown] = None
    valuePositiveInt: Opt[PositiveInt] = None
    valueString: Opt[String] = None
    valueTime: Opt[Time] = None
    valueUnsignedInt: Opt[UnsignedInt] = None
    valueUri: Opt[Uri] = None
    valueUrl: Opt[Url] = None
    valueAddress: Opt[Address] = None
    valueAnnotation: Opt[Annotation] = None
    valueAttachment: Opt[Attachment] = None
    valueCodeableConcept: Opt[CodeableConcept] = None
    valueCoding: Opt[Coding] = None
    valueContactPoint: Opt[ContactPoint] = None
    valueDuration: Opt[Duration] = None
    valueHumanName: Opt[HumanName] = None
    valueIdentifier: Opt[Identifier] = None
    valuePeriod: Opt[Period] = None
    valueQuantity: Opt[Quantity] = None
    valueRange: Opt[Range] = None
    valueRatio: Opt[Ratio] = None
    valueReference: Opt[Reference] = None
    valueTiming: Opt[Timing] = None
    valueDosage: Opt[Dosage] = None

    @model_validator(mode="after")
    def _value(self) -> Extension:
        _one_of(self, _EXTENSION_VALUES, required=False, element="value")
        return self


class Resource(Base):
    id: Opt[Id] = None
    meta: Opt[Meta] = None
    implicitRules: Opt[Uri] = None
    language: Opt[Code] = None


class DomainResource(Resource):
    text: Opt[Narrative] = None
    extension: Opt[list[Extension]] = None
    modifierExtension: Opt[list[Extension]] = None


# --- MessageHeader -----------------------------------------------------------------------------


class MessageDestination(BackboneElement):
    name: Opt[String] = None
    target: Opt[Reference] = None
    endpoint: Url
    receiver: Opt[Reference] = None


class MessageSource(BackboneElement):
    name: Opt[String] = None
    software: Opt[String] = None
    version: Opt[String] = None
    contact: Opt[ContactPoint] = None
    endpoint: Url


class MessageResponse(BackboneElement):
    identifier: Id
    code: Code
    details: Opt[Reference] = None


class MessageHeader(DomainResource):
    resourceType: Literal["MessageHeader"]
    eventCoding: Opt[Coding] = None
    eventUri: Opt[Uri] = None
    destination: Opt[list[MessageDestination]] = None
    sender: Opt[Reference] = None
    enterer: Opt[Reference] = None
    author: Opt[Reference] = None
    source: MessageSource
    responsible: Opt[Reference] = None
    reason: Opt[CodeableConcept] = None
    response: Opt[MessageResponse] = None
    focus: Opt[list[Reference]] = None
    definition: Opt[Canonical] = None

    @model_validator(mode="after")
    def _event(self) -> MessageHeader:
        _one_of(self, frozenset({"eventCoding", "eventUri"}), required=True, element="event")
        return self


# --- MedicationRequest -------------------------------------------------------------------------


class InitialFill(BackboneElement):
    quantity: Opt[SimpleQuantity] = None
    duration: Opt[Duration] = None


class DispenseRequest(BackboneElement):
    initialFill: Opt[InitialFill] = None
    dispenseInterval: Opt[Duration] = None
    validityPeriod: Opt[Period] = None
    numberOfRepeatsAllowed: Opt[UnsignedInt] = None
    quantity: Opt[SimpleQuantity] = None
    expectedSupplyDuration: Opt[Duration] = None
    performer: Opt[Reference] = None


class Substitution(BackboneElement):
    allowedBoolean: Opt[Boolean] = None
    allowedCodeableConcept: Opt[CodeableConcept] = None
    reason: Opt[CodeableConcept] = None

    @model_validator(mode="after")
    def _allowed(self) -> Substitution:
        _one_of(
            self, frozenset({"allowedBoolean", "allowedCodeableConcept"}), required=True, element="allowed"
        )
        return self


class MedicationRequest(DomainResource):
    resourceType: Literal["MedicationRequest"]
    identifier: Opt[list[Identifier]] = None
    status: MedicationRequestStatus
    statusReason: Opt[CodeableConcept] = None
    intent: MedicationRequestIntent
    category: Opt[list[CodeableConcept]] = None
    priority: Opt[RequestPriority] = None
    doNotPerform: Opt[Boolean] = None
    reportedBoolean: Opt[Boolean] = None
    reportedReference: Opt[Reference] = None
    medicationCodeableConcept: Opt[CodeableConcept] = None
    medicationReference: Opt[Reference] = None
    subject: Reference
    encounter: Opt[Reference] = None
    supportingInformation: Opt[list[Reference]] = None
    authoredOn: Opt[DateTime] = None
    requester: Opt[Reference] = None
    performer: Opt[Reference] = None
    performerType: Opt[CodeableConcept] = None
    recorder: Opt[Reference] = None
    reasonCode: Opt[list[CodeableConcept]] = None
    reasonReference: Opt[list[Reference]] = None
    instantiatesCanonical: Opt[list[Canonical]] = None
    instantiatesUri: Opt[list[Uri]] = None
    basedOn: Opt[list[Reference]] = None
    groupIdentifier: Opt[Identifier] = None
    courseOfTherapyType: Opt[CodeableConcept] = None
    insurance: Opt[list[Reference]] = None
    note: Opt[list[Annotation]] = None
    dosageInstruction: Opt[list[Dosage]] = None
    dispenseRequest: Opt[DispenseRequest] = None
    substitution: Opt[Substitution] = None
    priorPrescription: Opt[Reference] = None
    detectedIssue: Opt[list[Reference]] = None
    eventHistory: Opt[list[Reference]] = None

    @model_validator(mode="after")
    def _choices(self) -> MedicationRequest:
        _one_of(self, frozenset({"reportedBoolean", "reportedReference"}), required=False, element="reported")
        _one_of(
            self,
            frozenset({"medicationCodeableConcept", "medicationReference"}),
            required=True,
            element="medication",
        )
        return self


# --- People and organisations ------------------------------------------------------------------


class PatientContact(BackboneElement):
    relationship: Opt[list[CodeableConcept]] = None
    name: Opt[HumanName] = None
    telecom: Opt[list[ContactPoint]] = None
    address: Opt[Address] = None
    gender: Opt[Gender] = None
    organization: Opt[Reference] = None
    period: Opt[Period] = None


class PatientCommunication(BackboneElement):
    language: CodeableConcept
    preferred: Opt[Boolean] = None


class PatientLink(BackboneElement):
    other: Reference
    type: LinkType


class Patient(DomainResource):
    resourceType: Literal["Patient"]
    identifier: Opt[list[Identifier]] = None
    active: Opt[Boolean] = None
    name: Opt[list[HumanName]] = None
    telecom: Opt[list[ContactPoint]] = None
    gender: Opt[Gender] = None
    birthDate: Opt[Date] = None
    deceasedBoolean: Opt[Boolean] = None
    deceasedDateTime: Opt[DateTime] = None
    address: Opt[list[Address]] = None
    maritalStatus: Opt[CodeableConcept] = None
    multipleBirthBoolean: Opt[Boolean] = None
    multipleBirthInteger: Opt[Integer] = None
    photo: Opt[list[Attachment]] = None
    contact: Opt[list[PatientContact]] = None
    communication: Opt[list[PatientCommunication]] = None
    generalPractitioner: Opt[list[Reference]] = None
    managingOrganization: Opt[Reference] = None
    link: Opt[list[PatientLink]] = None

    @model_validator(mode="after")
    def _choices(self) -> Patient:
        _one_of(self, frozenset({"deceasedBoolean", "deceasedDateTime"}), required=False, element="deceased")
        _one_of(
            self,
            frozenset({"multipleBirthBoolean", "multipleBirthInteger"}),
            required=False,
            element="multipleBirth",
        )
        return self


class Qualification(BackboneElement):
    identifier: Opt[list[Identifier]] = None
    code: CodeableConcept
    period: Opt[Period] = None
    issuer: Opt[Reference] = None


class Practitioner(DomainResource):
    resourceType: Literal["Practitioner"]
    identifier: Opt[list[Identifier]] = None
    active: Opt[Boolean] = None
    name: Opt[list[HumanName]] = None
    telecom: Opt[list[ContactPoint]] = None
    address: Opt[list[Address]] = None
    gender: Opt[Gender] = None
    birthDate: Opt[Date] = None
    photo: Opt[list[Attachment]] = None
    qualification: Opt[list[Qualification]] = None
    communication: Opt[list[CodeableConcept]] = None


class AvailableTime(BackboneElement):
    daysOfWeek: Opt[list[Code]] = None
    allDay: Opt[Boolean] = None
    availableStartTime: Opt[Time] = None
    availableEndTime: Opt[Time] = None


class NotAvailable(BackboneElement):
    description: String
    during: Opt[Period] = None


class PractitionerRole(DomainResource):
    resourceType: Literal["PractitionerRole"]
    identifier: Opt[list[Identifier]] = None
    active: Opt[Boolean] = None
    period: Opt[Period] = None
    practitioner: Opt[Reference] = None
    organization: Opt[Reference] = None
    code: Opt[list[CodeableConcept]] = None
    specialty: Opt[list[CodeableConcept]] = None
    location: Opt[list[Reference]] = None
    healthcareService: Opt[list[Reference]] = None
    telecom: Opt[list[ContactPoint]] = None
    availableTime: Opt[list[AvailableTime]] = None
    notAvailable: Opt[list[NotAvailable]] = None
    availabilityExceptions: Opt[String] = None
    endpoint: Opt[list[Reference]] = None


class OrganizationContact(BackboneElement):
    purpose: Opt[CodeableConcept] = None
    name: Opt[HumanName] = None
    telecom: Opt[list[ContactPoint]] = None
    address: Opt[Address] = None


class Organization(DomainResource):
    resourceType: Literal["Organization"]
    identifier: Opt[list[Identifier]] = None
    active: Opt[Boolean] = None
    type: Opt[list[CodeableConcept]] = None
    name: Opt[String] = None
    alias: Opt[list[String]] = None
    telecom: Opt[list[ContactPoint]] = None
    address: Opt[list[Address]] = None
    partOf: Opt[Reference] = None
    contact: Opt[list[OrganizationContact]] = None
    endpoint: Opt[list[Reference]] = None


# --- Provenance, CommunicationRequest, List ----------------------------------------------------


class ProvenanceAgent(BackboneElement):
    type: Opt[CodeableConcept] = None
    role: Opt[list[CodeableConcept]] = None
    who: Reference
    onBehalfOf: Opt[Reference] = None


class Provenance(DomainResource):
    resourceType: Literal["Provenance"]
    target: list[Reference] = Field(min_length=1)
    occurredPeriod: Opt[Period] = None
    occurredDateTime: Opt[DateTime] = None
    recorded: Instant
    policy: Opt[list[Uri]] = None
    location: Opt[Reference] = None
    reason: Opt[list[CodeableConcept]] = None
    activity: Opt[CodeableConcept] = None
    agent: list[ProvenanceAgent] = Field(min_length=1)
    signature: Opt[list[Signature]] = None

    @model_validator(mode="after")
    def _occurred(self) -> Provenance:
        _one_of(self, frozenset({"occurredPeriod", "occurredDateTime"}), required=False, element="occurred")
        return self


class CommunicationPayload(BackboneElement):
    contentString: Opt[String] = None
    contentAttachment: Opt[Attachment] = None
    contentReference: Opt[Reference] = None

    @model_validator(mode="after")
    def _content(self) -> CommunicationPayload:
        _one_of(
            self,
            frozenset({"contentString", "contentAttachment", "contentReference"}),
            required=True,
            element="content",
        )
        return self


class CommunicationRequest(DomainResource):
    resourceType: Literal["CommunicationRequest"]
    identifier: Opt[list[Identifier]] = None
    basedOn: Opt[list[Reference]] = None
    replaces: Opt[list[Reference]] = None
    groupIdentifier: Opt[Identifier] = None
    status: RequestStatus
    statusReason: Opt[CodeableConcept] = None
    category: Opt[list[CodeableConcept]] = None
    priority: Opt[RequestPriority] = None
    doNotPerform: Opt[Boolean] = None
    medium: Opt[list[CodeableConcept]] = None
    subject: Opt[Reference] = None
    about: Opt[list[Reference]] = None
    encounter: Opt[Reference] = None
    payload: Opt[list[CommunicationPayload]] = None
    occurrenceDateTime: Opt[DateTime] = None
    occurrencePeriod: Opt[Period] = None
    authoredOn: Opt[DateTime] = None
    requester: Opt[Reference] = None
    recipient: Opt[list[Reference]] = None
    sender: Opt[Reference] = None
    reasonCode: Opt[list[CodeableConcept]] = None
    reasonReference: Opt[list[Reference]] = None
    note: Opt[list[Annotation]] = None

    @model_validator(mode="after")
    def _occurrence(self) -> CommunicationRequest:
        _one_of(
            self, frozenset({"occurrenceDateTime", "occurrencePeriod"}), required=False, element="occurrence"
        )
        return self


class ListEntry(BackboneElement):
    flag: Opt[CodeableConcept] = None
    deleted: Opt[Boolean] = None
    date: Opt[DateTime] = None
    item: Reference


class List(DomainResource):
    resourceType: Literal["List"]
    identifier: Opt[list[Identifier]] = None
    status: ListStatus
    mode: ListMode
    title: Opt[String] = None
    code: Opt[CodeableConcept] = None
    subject: Opt[Reference] = None
    encounter: Opt[Reference] = None
    date: Opt[DateTime] = None
    source: Opt[Reference] = None
    orderedBy: Opt[CodeableConcept] = None
    note: Opt[list[Annotation]] = None
    entry: Opt[list[ListEntry]] = None
    emptyReason: Opt[CodeableConcept] = None


# --- Bundle ------------------------------------------------------------------------------------

CoveredResource = Annotated[
    MessageHeader
    | MedicationRequest
    | Patient
    | Practitioner
    | PractitionerRole
    | Organization
    | Provenance
    | CommunicationRequest
    | List,
    Field(discriminator="resourceType"),
]

COVERED_RESOURCE_TYPES = frozenset(
    {
        "MessageHeader",
        "MedicationRequest",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Provenance",
        "CommunicationRequest",
        "List",
    }
)


class BundleLink(BackboneElement):
    relation: String
    url: Uri


class BundleEntry(BackboneElement):
    link: Opt[list[BundleLink]] = None
    fullUrl: Opt[Uri] = None
    resource: Opt[CoveredResource] = None


class Bundle(Resource):
    resourceType: Literal["Bundle"]
    identifier: Opt[Identifier] = None
    type: BundleType
    timestamp: Opt[Instant] = None
    total: Opt[UnsignedInt] = None
    link: Opt[list[BundleLink]] = None
    entry: Opt[list[BundleEntry]] = None
    signature: Opt[Signature] = None


for _model in list(globals().values()):
    if isinstance(_model, type) and issubclass(_model, BaseModel) and _model is not BaseModel:
        _model.model_rebuild()
