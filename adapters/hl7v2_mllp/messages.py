"""The HL7 v2.5 messages of the `hl7v2-mllp` adapter: the RDE^O11 order it sends, and the ACKs both ways.

One prescription is one RDE^O11 with one ORC group per line item:

| segment | field | value |
|---|---|---|
| MSH | 3 / 4 | sending application / facility (the gateway, from settings) |
| MSH | 5 / 6 | receiving application (settings) / facility: the provider's ODS code |
| MSH | 9 / 10 / 12 | `RDE^O11^RDE_O11` / control id from the idempotency key / `2.5` |
| PID | 3 | `<NHS number>^^^NHS^NH` |
| PID | 5 / 7 / 8 / 11 | name `family^given^more given^^prefix^^L`, date of birth, sex (M/F/O/U), home address |
| ORC | 1 | `NW` new order, `CA` cancel request |
| ORC | 2 / 4 | placer order number: line item identifier / placer group: short-form ID (`^<trust ODS>`) |
| ORC | 9 / 16 | when the message was made / for `CA`: the trust's cancellation reason `code^text^99EPSCR` |
| ORC | 21 | ordering facility: the trust's ODS code |
| RXE | 2 / 3 / 5 | dm+d medicine `code^name^SCT` / dose and dose unit, when the prescription has a structured dose |
| RXE | 10 / 11 / 15 | quantity to supply and its unit / prescription number (short-form ID) |
| NTE | 3 | the dosage instruction text (authoritative when there is no structured dose) |
| TQ1 | 3 | repeat pattern (`Q2W`, `BID`, ...), when the timing can be expressed in HL7 table 0335 |
| RXR | 1 | route `code^name^SCT`, when given |

Patient data never reaches a log: only ids and control ids do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from adapters.hl7v2_mllp.codec import (
    ORDER_VERSION,
    Hl7Error,
    ParsedMessage,
    coded,
    escape,
    header_fields,
    hl7_date,
    hl7_timestamp,
    normalise,
    parse,
    readable_version,
)
from adapters.order_content import OrderContent, OrderLine, PatientDetails, Timing

CANCEL_REASON_SYSTEM = "99EPSCR"
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
# FHIR periodUnit -> the letter of HL7 table 0335 `Q<n><unit>` patterns.
_PERIOD_LETTERS = {"s": "S", "min": "M", "h": "H", "d": "D", "wk": "W", "mo": "L"}
_TIMES_A_DAY = {1: "QD", 2: "BID", 3: "TID", 4: "QID"}


@dataclass(frozen=True, slots=True)
class Parties:
    """MSH-3 to MSH-6 of a message we send."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    processing_id: str = "P"


def build_order_message(content: OrderContent, *, control_id: str, parties: Parties, now: datetime) -> str:
    """The RDE^O11 for one prescription (new) or its cancellation (ORC-1 `CA`), as ER7 text."""
    message: Any = Message("RDE_O11", version=ORDER_VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    _header(message.msh, parties, "RDE^O11^RDE_O11", control_id, now)
    if content.patient is not None:
        _patient(message.add_group("RDE_O11_PATIENT").pid, content.patient)
    for line in content.lines:
        _order_group(message.add_group("RDE_O11_ORDER"), content, line, now)
    return str(message.to_er7())


def _header(msh: Any, parties: Parties, message_type: str, control_id: str, now: datetime) -> None:
    msh.msh_3 = escape(parties.sending_application)
    msh.msh_4 = escape(parties.sending_facility)
    msh.msh_5 = escape(parties.receiving_application)
    msh.msh_6 = escape(parties.receiving_facility)
    msh.msh_7 = hl7_timestamp(now)
    msh.msh_9 = message_type
    msh.msh_10 = escape(control_id)
    msh.msh_11 = parties.processing_id
    msh.msh_12 = ORDER_VERSION
    msh.msh_18 = "UNICODE UTF-8"


def _patient(pid: Any, patient: PatientDetails) -> None:
    pid.pid_1 = "1"
    pid.pid_3 = f"{escape(patient.nhs_number)}^^^NHS^NH"
    given = [escape(name) for name in patient.given]
    pid.pid_5 = "^".join(
        [
            escape(patient.family or ""),
            given[0] if given else "",
            " ".join(given[1:]),
            "",
            escape(patient.prefix or ""),
            "",
            "L",
        ]
    )
    if patient.birth_date:
        pid.pid_7 = hl7_date(patient.birth_date)
    if patient.gender in _SEX:
        pid.pid_8 = _SEX[patient.gender]
    lines = [escape(line) for line in patient.address_lines]
    if lines or patient.postcode:
        first = lines[0] if lines else ""
        rest = ", ".join(lines[1:])
        pid.pid_11 = f"{first}^{rest}^{escape(patient.city or '')}^^{escape(patient.postcode or '')}^^H"


def _order_group(group: Any, content: OrderContent, line: OrderLine, now: datetime) -> None:
    placer = escape(content.sender_ods)
    orc = group.orc
    orc.orc_1 = "NW" if content.kind == "new" else "CA"
    orc.orc_2 = f"{escape(line.item_identifier)}^{placer}"
    orc.orc_4 = f"{escape(content.short_form_id)}^{placer}"
    orc.orc_9 = hl7_timestamp(now)
    if line.cancel_reason is not None:
        orc.orc_16 = coded(line.cancel_reason.code, line.cancel_reason.display, CANCEL_REASON_SYSTEM)
    orc.orc_21 = placer
    rxe = group.rxe
    rxe.rxe_2 = coded(line.medication.code, line.medication.display, "SCT")
    if line.dose_value is not None:
        rxe.rxe_3 = line.dose_value
        if line.dose_unit is not None:
            rxe.rxe_5 = coded(line.dose_unit.code, line.dose_unit.display, "UCUM")
    if line.quantity_value is not None:
        rxe.rxe_10 = line.quantity_value
    if line.quantity_unit is not None:
        rxe.rxe_11 = coded(line.quantity_unit.code, line.quantity_unit.display, "SCT")
    rxe.rxe_15 = escape(content.short_form_id)
    if line.dosage_text:
        note = group.add_segment("NTE")
        note.nte_1 = "1"
        note.nte_2 = "P"
        note.nte_3 = escape(line.dosage_text)
    pattern = repeat_pattern(line.timing)
    if pattern is not None:
        timing = group.add_group("RDE_O11_TIMING_ENCODED").tq1
        timing.tq1_1 = "1"
        timing.tq1_3 = pattern
    if line.route is not None:
        group.rxr.rxr_1 = coded(line.route.code, line.route.display, "SCT")


def repeat_pattern(timing: Timing | None) -> str | None:
    """The HL7 table 0335 repeat pattern for a FHIR timing, or None when it has no such expression."""
    if timing is None or timing.period <= 0 or timing.period != int(timing.period):
        return None
    period = int(timing.period)
    if timing.frequency == 1 and timing.period_unit in _PERIOD_LETTERS:
        return f"Q{period}{_PERIOD_LETTERS[timing.period_unit]}"
    if period == 1 and timing.period_unit == "d" and timing.frequency >= 1:
        return _TIMES_A_DAY.get(timing.frequency, f"{timing.frequency}ID")
    return None


# --- Acknowledgements ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """An ACK as read: MSA-1 code, MSA-2 the control id it answers, and the reason when it is not AA."""

    code: str
    control_id: str
    reason: str | None
    error_code: str | None
    application_error: str | None = None


def read_ack(raw: bytes) -> Acknowledgement:
    """An ACK received from a provider; `Hl7Error` when it is not one."""
    message: ParsedMessage = parse(raw)
    msa = message.named("MSA")
    if not msa:
        raise Hl7Error("the answer has no MSA segment", location="MSA")
    code = msa[0].field(1).strip().upper()
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise Hl7Error(f"MSA-1 '{code[:5]}' is not an acknowledgement code", location="MSA^1^1")
    errors = message.named("ERR")
    texts = [text for err in errors for text in (err.component(8), err.component(7)) if text]
    if not texts:
        texts = [text for err in errors if (text := err.component(3, 2))]
    reason = "; ".join(dict.fromkeys(text for text in [*texts, msa[0].component(3)] if text)) or None
    error_code = next((err.component(3, 1) for err in errors if err.component(3, 1)), None)
    application_error = next((err.component(5, 1) for err in errors if err.component(5, 1)), None)
    return Acknowledgement(code, msa[0].component(2), reason, error_code, application_error)


def build_ack(
    received: bytes | str,
    *,
    code: str,
    control_id: str,
    now: datetime,
    reason: str | None = None,
    error_code: str | None = None,
    error_location: str | None = None,
    application_error: str | None = None,
) -> str:
    """The ACK answering `received` (addressed from its MSH, read without a parser so that even a message
    that does not parse is answered): MSA-1 `code`, MSA-2 its control id, an ERR with the reason."""
    text = received if isinstance(received, str) else normalise(received)
    theirs = header_fields(text)

    def their(number: int) -> str:
        return theirs[number - 1] if len(theirs) >= number else ""

    trigger = their(9).split("^")[1] if "^" in their(9) else ""
    # Answer in the sender's version when it is one we read (so it can read the ACK), else in ours.
    version = their(12) if readable_version(their(12)) == their(12) else ORDER_VERSION
    lines = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                their(5),
                their(6),
                their(3),
                their(4),
                hl7_timestamp(now),
                "",
                f"ACK^{trigger}^ACK" if trigger else "ACK",
                escape(control_id),
                their(11) or "P",
                version,
            ]
        ),
        "|".join(["MSA", code, their(10), escape(reason or "")]).rstrip("|"),
    ]
    if code != "AA" and reason:
        location = "^".join(escape(part) for part in (error_location or "").split("^"))
        hl7_error = f"{error_code or '207'}^{_error_name(error_code)}^HL70357"
        # ERR-2 location, ERR-3 HL7 error code, ERR-4 severity, ERR-5 the gateway's own code, ERR-8 the reason.
        application = escape(application_error or "")
        lines.append("|".join(["ERR", "", location, hl7_error, "E", application, "", "", escape(reason)]))
    return "\r".join(lines)


def _error_name(error_code: str | None) -> str:
    return {
        "100": "Segment sequence error",
        "101": "Required field missing",
        "102": "Data type error",
        "103": "Table value not found",
        "200": "Unsupported message type",
        "201": "Unsupported event code",
        "203": "Unsupported version id",
        "204": "Unknown key identifier",
        "205": "Duplicate key identifier",
        "206": "Application record locked",
        "207": "Application internal error",
    }.get(error_code or "207", "Application internal error")
