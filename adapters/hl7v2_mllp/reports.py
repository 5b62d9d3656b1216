"""Status from a provider in HL7 v2: ORR^O02 (order response) and RDS^O13 (dispense) read into `ProviderReport`s.

Segments are read in order, each ORC starting one report about one line item; the TQ1, RXD and ZHS
segments after an ORC belong to it (any version from 2.3 on; groups are not required).

| field | read as |
|---|---|
| MSH-4 | the provider's ODS code (checked against the connection's authentication) |
| MSH-10 | the message's control id: with MSH-4, the key that makes a repeat apply once |
| ORC-2.1 / ORC-4.1 | line item identifier / short-form prescription ID, as the gateway sent them |
| ORC-1, ORC-5 | the status, by the table below |
| ORC-25 | `<homecare-status code>^<text>^HOMECARE-STATUS` (order status modifier): when present, it decides |
| ORC-9 | when it happened (RXD-3 for a dispense, else MSH-7); no offset means `default_zone` |
| ORC-16 | reason `code^text` (rejection, query, failed delivery) |
| TQ1-7 / TQ1-8 | delivery window start / end (delivery-scheduled) |
| RXD-2, -4, -5, -19, -20 | what was dispensed: medicine, quantity, unit, batch, expiry |
| ZHS-1 / ZHS-2 | local segment: who caused it (patient, trust, provider, courier) / delivery attempt number |

ORC-1 / ORC-5 (HL7 tables 0119 / 0038) to homecare status, for ORR^O02 (RDS^O13 is always `dispensed`):

| ORC-1 | ORC-5 | status |
|---|---|---|
| OK, RL, OR | any | accepted |
| UA | any | rejected |
| CR, OC | any | cancelled |
| UC | any | cancel refused (the item goes back where it was) |
| HD, OH | any | query |
| SC | IP | in-preparation |
| SC | SC | delivery-scheduled |
| SC | CM | delivered |
| SC | HD | query |
| SC | CA | cancelled |

Anything else is refused (AE, table value not found) with the fields named, so the provider knows
to send ORC-25 instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from adapters.hl7v2_mllp.codec import Hl7Error, ParsedMessage, Segment, parse, parse_timestamp
from adapters.inbound import (
    DeliveryWindow,
    DispenseDetail,
    InboundFormatError,
    ProviderReport,
    ReportKind,
    checked_report,
)

STATUS_MESSAGES = ("ORR^O02", "RDS^O13")
_BY_ORDER_CONTROL = {
    "OK": "accepted",
    "RL": "accepted",
    "OR": "accepted",
    "UA": "rejected",
    "CR": "cancelled",
    "OC": "cancelled",
    "HD": "query",
    "OH": "query",
}
_BY_ORDER_STATUS = {
    "IP": "in-preparation",
    "SC": "delivery-scheduled",
    "CM": "delivered",
    "HD": "query",
    "CA": "cancelled",
}
CANCEL_REFUSED = "UC"
# ORC-25 coding system of a homecare-status code (a local code system: HL7 has none for delivery).
HOMECARE_STATUS_SYSTEM = "HOMECARE-STATUS"


@dataclass(frozen=True, slots=True)
class StatusMessage:
    message_type: str
    control_id: str
    sending_facility: str
    reports: tuple[ProviderReport, ...]


def read_status_message(raw: bytes, *, default_zone: tzinfo) -> StatusMessage:
    """The reports in an ORR^O02 or RDS^O13; `Hl7Error` (with the HL7 error code and where) otherwise."""
    message = parse(raw)
    message_type = message.message_type
    if message_type not in STATUS_MESSAGES:
        what = "an order" if message_type.startswith("RDE") else f"'{message_type[:16]}'"
        raise Hl7Error(
            f"{what} is not a status message; the gateway takes ORR^O02 and RDS^O13",
            error_code="200",
            location="MSH^1^9",
        )
    control_id = message.control_id
    if not control_id:
        raise Hl7Error("MSH-10 (message control id) is missing", error_code="101", location="MSH^1^10")
    facility = message.msh.component(4)
    if not facility:
        raise Hl7Error("MSH-4 (sending facility: the provider's ODS code) is missing", error_code="101")
    sent_at = _time(message.msh.field(7), "MSH^1^7", default_zone)
    reports = tuple(
        _report(message_type, group, position, sent_at, default_zone)
        for position, group in enumerate(_order_groups(message), start=1)
    )
    if not reports:
        raise Hl7Error("the message has no ORC segment: there is nothing to report", location="ORC")
    return StatusMessage(message_type, control_id, facility, reports)


def _order_groups(message: ParsedMessage) -> list[list[Segment]]:
    groups: list[list[Segment]] = []
    for segment in message.segments:
        if segment.name == "ORC":
            groups.append([segment])
        elif groups and segment.name in ("TQ1", "RXD", "ZHS"):
            groups[-1].append(segment)
    return groups


def _time(text: str, location: str, default_zone: tzinfo) -> datetime | None:
    try:
        return parse_timestamp(text, default_zone=default_zone)
    except ValueError as exc:
        raise Hl7Error(str(exc), error_code="102", location=location) from exc


def _report(
    message_type: str, group: list[Segment], position: int, sent_at: datetime | None, zone: tzinfo
) -> ProviderReport:
    orc = group[0]
    where = f"ORC^{position}"
    item, short_form = orc.component(2), orc.component(4)
    if not item:
        raise Hl7Error(
            "ORC-2 (placer order number: the line item identifier) is missing",
            error_code="101",
            location=f"{where}^2",
        )
    if not short_form:
        raise Hl7Error(
            "ORC-4 (placer group number: the short-form prescription ID) is missing",
            error_code="101",
            location=f"{where}^4",
        )
    kind, status = _status(message_type, orc, where)
    first = {segment.name: segment for segment in reversed(group[1:])}
    dispense = _dispense(first.get("RXD"))
    occurred = _time(orc.field(9), f"{where}^9", zone)
    if occurred is None and "RXD" in first:
        occurred = _time(first["RXD"].field(3), "RXD^1^3", zone)
    occurred = occurred or sent_at
    if occurred is None:
        raise Hl7Error("no time: ORC-9 and MSH-7 are both empty", error_code="101", location=f"{where}^9")
    details = first.get("ZHS")
    try:
        return checked_report(
            ProviderReport(
                short_form_id=short_form,
                item_identifier=item,
                status=status,
                occurred_at=occurred,
                kind=kind,
                reason_code=orc.component(16, 1) or None,
                reason_text=orc.component(16, 2) or None,
                responsible_party=details.component(1) or None if details else None,
                delivery_window=_window(first.get("TQ1"), zone),
                delivery_attempt=_attempt(details),
                dispense=dispense,
            ),
            location=where,
        )
    except InboundFormatError as exc:
        raise Hl7Error(exc.reason, error_code="103", location=exc.location) from exc


def _status(message_type: str, orc: Segment, where: str) -> tuple[ReportKind, str | None]:
    if orc.component(25, 3) == HOMECARE_STATUS_SYSTEM:
        return ReportKind.STATUS, orc.component(25, 1)
    if message_type == "RDS^O13":
        return ReportKind.STATUS, "dispensed"
    control, order_status = orc.field(1).strip().upper(), orc.component(5).strip().upper()
    if control == CANCEL_REFUSED:
        return ReportKind.CANCEL_REFUSED, None
    status = _BY_ORDER_CONTROL.get(control) or (
        _BY_ORDER_STATUS.get(order_status) if control == "SC" else None
    )
    if status is None:
        raise Hl7Error(
            f"ORC-1 '{control[:4]}' with ORC-5 '{order_status[:4]}' is not a status the gateway reads; "
            f"send ORC-25 as <homecare-status code>^^{HOMECARE_STATUS_SYSTEM}",
            error_code="103",
            location=f"{where}^1",
        )
    return ReportKind.STATUS, status


def _window(tq1: Segment | None, zone: tzinfo) -> DeliveryWindow | None:
    if tq1 is None:
        return None
    start, end = _time(tq1.field(7), "TQ1^1^7", zone), _time(tq1.field(8), "TQ1^1^8", zone)
    return DeliveryWindow(start, end) if start is not None and end is not None else None


def _attempt(details: Segment | None) -> int | None:
    text = details.component(2) if details else ""
    if not text:
        return None
    if not text.isdigit():
        raise Hl7Error(
            f"ZHS-2 '{text[:10]}' is not a delivery attempt number", error_code="102", location="ZHS^1^2"
        )
    return int(text)


def _dispense(rxd: Segment | None) -> DispenseDetail | None:
    if rxd is None:
        return None
    expiry = rxd.component(20)
    return DispenseDetail(
        medication_code=rxd.component(2, 1) or None,
        medication_display=rxd.component(2, 2) or None,
        quantity=rxd.component(4) or None,
        unit=rxd.component(5, 2) or rxd.component(5, 1) or None,
        batch=rxd.component(19) or None,
        expiry=f"{expiry[:4]}-{expiry[4:6]}-{expiry[6:8]}"
        if len(expiry) >= 8 and expiry[:8].isdigit()
        else None,
    )
