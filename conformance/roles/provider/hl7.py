"""HL7 v2 for the provider role, as the README's `hl7v2-mllp` section documents it (the suite's own
reading: it shares no code with the gateway's adapter).

Out: one RDE^O11 per prescription, built with hl7apy: MSH-6 the provider's ODS code, MSH-10 derived
from the idempotency key, PID-3 the NHS number, one ORC/RXE/NTE group per line item (ORC-1 `NW` or
`CA`, ORC-2 the item, ORC-4 the short-form prescription ID, ORC-16 the cancellation reason, ORC-21 the
trust; RXE-2 the dm+d medicine, RXE-10/11 the quantity, RXE-15 the prescription ID).

In: ORR^O02 and RDS^O13, one ORC per item, read into the Task the gateway would record; and the ACKs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message as Hl7Message

from conformance.roles.provider.base import OrderFacts, report_task

VERSION = "2.5"
CANCEL_REASON_SYSTEM = "99EPSCR"
HOMECARE_STATUS_CODING = "HOMECARE-STATUS"
LONDON = ZoneInfo("Europe/London")
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_ESCAPE_SEQUENCE = re.compile(r"\\([EFSTR])\\")
_UNESCAPES = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
# README `hl7v2-mllp`, "Status back": ORC-1 (table 0119), or ORC-1 `SC` with ORC-5 (table 0038).
BY_ORDER_CONTROL = {
    "OK": "accepted",
    "RL": "accepted",
    "OR": "accepted",
    "UA": "rejected",
    "HD": "query",
    "OH": "query",
    "CR": "cancelled",
    "OC": "cancelled",
    "UC": "cancel-refused",
}
BY_ORDER_STATUS = {
    "IP": "in-preparation",
    "SC": "delivery-scheduled",
    "CM": "delivered",
    "HD": "query",
    "CA": "cancelled",
}


def escape(text: str) -> str:
    for character, sequence in _ESCAPES:
        text = text.replace(character, sequence)
    return text.replace("\r", " ").replace("\n", " ")


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def order_message(facts: OrderFacts, *, control_id: str, now: datetime, invalid: bool = False) -> str:
    """The RDE^O11 for an order (ORC-1 `NW`) or its cancellation (`CA`). `invalid` leaves out ORC-4 and
    RXE-15 (the prescription ID: required in every ORC)."""
    message: Any = Hl7Message("RDE_O11", version=VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    msh = message.msh
    msh.msh_3 = "HOMECARE-GATEWAY"
    msh.msh_4 = "HOMECARE-GATEWAY"
    msh.msh_5 = "PHARMACY"
    msh.msh_6 = escape(facts.provider_ods)
    msh.msh_7 = timestamp(now)
    msh.msh_9 = "RDE^O11^RDE_O11"
    msh.msh_10 = escape(control_id)
    msh.msh_11 = "P"
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"
    pid = message.add_group("RDE_O11_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{escape(facts.nhs_number)}^^^NHS^NH"
    given = [escape(name) for name in facts.given_names]
    pid.pid_5 = f"{escape(facts.family_name)}^{given[0] if given else ''}^{' '.join(given[1:])}^^^^L"
    if facts.birth_date:
        pid.pid_7 = facts.birth_date.replace("-", "")[:8]
    if facts.gender in _SEX:
        pid.pid_8 = _SEX[facts.gender]
    if facts.postcode:
        pid.pid_11 = f"^^^^{escape(facts.postcode)}^^H"
    trust = escape(facts.trust_ods)
    for line in facts.lines:
        group = message.add_group("RDE_O11_ORDER")
        orc = group.orc
        orc.orc_1 = "NW" if facts.kind == "new" else "CA"
        orc.orc_2 = f"{escape(line.item_identifier)}^{trust}"
        if not invalid:
            orc.orc_4 = f"{escape(facts.short_form_id)}^{trust}"
        orc.orc_9 = timestamp(now)
        if line.cancel_reason_code:
            orc.orc_16 = (
                f"{escape(line.cancel_reason_code)}^{escape(line.cancel_reason)}^{CANCEL_REASON_SYSTEM}"
            )
        orc.orc_21 = trust
        rxe = group.rxe
        rxe.rxe_2 = f"{escape(line.medication_code)}^{escape(line.medication_name)}^SCT"
        if line.quantity_value:
            rxe.rxe_10 = escape(line.quantity_value)
        if line.quantity_unit:
            rxe.rxe_11 = f"^{escape(line.quantity_unit)}"
        if not invalid:
            rxe.rxe_15 = escape(facts.short_form_id)
        if line.dosage_text:
            note = group.add_segment("NTE")
            note.nte_1 = "1"
            note.nte_2 = "P"
            note.nte_3 = escape(line.dosage_text)
    return str(message.to_er7())


# --- reading ER7 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    name: str
    fields: list[str]  # fields[n] is field n (MSH numbered as HL7 numbers it)

    def field(self, number: int) -> str:
        return self.fields[number] if 0 < number < len(self.fields) else ""

    def component(self, number: int, position: int = 1) -> str:
        parts = self.field(number).split("~", 1)[0].split("^")
        return unescape(parts[position - 1]) if position <= len(parts) else ""


def unescape(text: str) -> str:
    return _ESCAPE_SEQUENCE.sub(lambda match: _UNESCAPES[match.group(1)], text)


class Hl7ReadError(ValueError):
    """Not an HL7 v2 message the suite can read."""


def segments(raw: bytes | str) -> list[Segment]:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    lines = [line for line in re.split(r"\r\n|\r|\n", text.strip()) if line.strip()]
    if not lines or not lines[0].startswith("MSH|"):
        raise Hl7ReadError("the message does not start with an MSH segment")
    read = []
    for line in lines:
        parts = line.split("|")
        name = parts[0]
        fields = ["MSH", "|", *parts[1:]] if name == "MSH" else parts
        read.append(Segment(name, fields))
    return read


def readable(raw: bytes | str) -> str:
    """A message for evidence: one segment a line."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return "\n".join(re.split(r"\r\n|\r|\n", text.strip()))


@dataclass(frozen=True)
class Ack:
    code: str
    reason: str | None
    error_code: str | None


def read_ack(raw: bytes) -> Ack:
    read = segments(raw)
    msa = next((s for s in read if s.name == "MSA"), None)
    if msa is None:
        raise Hl7ReadError("the answer has no MSA segment")
    errors = [s for s in read if s.name == "ERR"]
    texts = [t for err in errors for t in (err.component(8), err.component(7)) if t]
    texts += [msa.component(3)] if msa.component(3) else []
    error_code = next((err.component(3) for err in errors if err.component(3)), None)
    return Ack(msa.component(1).strip().upper(), "; ".join(dict.fromkeys(texts)) or None, error_code)


def ack_for(raw: bytes, *, code: str, now: datetime, reason: str | None = None) -> str:
    """The ACK the suite (as the gateway's listener) answers a status message with."""
    try:
        msh = segments(raw)[0]
    except Hl7ReadError:
        msh = Segment("MSH", ["MSH", "|"])
    trigger = msh.component(9, 2)
    lines = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                msh.field(5),
                msh.field(6),
                msh.field(3),
                msh.field(4),
                timestamp(now),
                "",
                f"ACK^{trigger}^ACK" if trigger else "ACK",
                now.strftime("%Y%m%d%H%M%S%f")[:20],
                msh.field(11) or "P",
                VERSION,
            ]
        ),
        "|".join(["MSA", code, msh.field(10), escape(reason or "")]).rstrip("|"),
    ]
    if code != "AA" and reason:
        lines.append(
            "|".join(
                ["ERR", "", "", "207^Application internal error^HL70357", "E", "", "", "", escape(reason)]
            )
        )
    return "\r".join(lines)


def parse_time(text: str) -> datetime | None:
    match = _DTM.match(text.strip())
    if not text.strip() or match is None:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    moment = datetime(
        int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
    )
    if offset is None:
        return moment.replace(tzinfo=LONDON)
    shift = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return moment.replace(tzinfo=timezone(shift if offset[0] == "+" else -shift))


@dataclass(frozen=True)
class ReadReport:
    task: dict[str, Any]
    problem: str | None


def status_reports(raw: bytes) -> tuple[str, list[ReadReport]]:
    """The control id (MSH-10, with MSH-4 what makes a repeat one message) and one Task per ORC."""
    read = segments(raw)
    msh = read[0]
    message_type = f"{msh.component(9, 1)}^{msh.component(9, 2)}"
    if message_type not in ("ORR^O02", "RDS^O13"):
        raise Hl7ReadError(f"{message_type[:16]!r} is not a status message (ORR^O02 or RDS^O13)")
    provider = msh.component(4)
    sent_at = parse_time(msh.field(7))
    reports: list[ReadReport] = []
    current: Segment | None = None
    followers: dict[str, Segment] = {}

    def finish() -> None:
        if current is not None:
            reports.append(_report(message_type, current, followers, provider, sent_at))

    for segment in read[1:]:
        if segment.name == "ORC":
            finish()
            current, followers = segment, {}
        elif current is not None and segment.name in ("TQ1", "RXD", "ZHS"):
            followers.setdefault(segment.name, segment)
    finish()
    if not reports:
        raise Hl7ReadError("the message has no ORC segment: nothing is reported")
    return f"{provider}/{msh.field(10)}", reports


def _report(
    message_type: str, orc: Segment, followers: dict[str, Segment], provider: str, sent_at: datetime | None
) -> ReadReport:
    problem = None
    if orc.component(25, 3) == HOMECARE_STATUS_CODING:
        status: str | None = orc.component(25, 1)
    elif message_type == "RDS^O13":
        status = "dispensed"
    else:
        control, order_status = orc.field(1).strip().upper(), orc.component(5).strip().upper()
        status = BY_ORDER_CONTROL.get(control) or (
            BY_ORDER_STATUS.get(order_status) if control == "SC" else None
        )
        if status is None:
            problem = f"ORC-1 {control[:4]!r} with ORC-5 {order_status[:4]!r} is no status the README maps"
    occurred = parse_time(orc.field(9))
    if occurred is None and "RXD" in followers:
        occurred = parse_time(followers["RXD"].field(3))
    task = report_task(
        short_form_id=orc.component(4),
        item=orc.component(2),
        status=status,
        occurred_at=occurred or sent_at,
        owner_ods=provider,
        reason_code=orc.component(16, 1) or None,
        reason_text=orc.component(16, 2) or None,
    )
    return ReadReport(task, problem)
