"""The `csv-drop` file formats, versioned: order files the gateway writes, status files the provider writes.

Both are CSV (RFC 4180, UTF-8, comma, a header row naming the columns) with one row per line item;
each row carries its format in `format_version`, so a provider can tell a future version apart row by row.

Order file `homecare-order/1` (`<order key>.csv`; the order key is the gateway's idempotency key, the
same for every resend of one message):

    format_version, order_key, message_type (new | cancel), created_at, short_form_id, long_form_id,
    trust_ods, provider_ods, item_identifier, nhs_number, family_name, given_names, name_prefix,
    birth_date, gender, address, postcode, medication_code (dm+d), medication_name, dose_value,
    dose_unit, route_code, route_name, dosage_text, frequency, period, period_unit, quantity_value,
    quantity_unit_code, quantity_unit, valid_until, cancel_reason_code, cancel_reason

Status file `homecare-status/1` (any name ending `.csv`; names starting with `.` are ignored, so write
under a dot name and rename):

    format_version, status_id, short_form_id, item_identifier, status, occurred_at  (required)
    reason_code, reason_text, responsible_party, delivery_window_start, delivery_window_end,
    delivery_attempt, dispensed_code, dispensed_name, dispensed_quantity, dispensed_unit, batch,
    expiry  (optional columns; leave a cell empty when it does not apply)

`status_id` is the provider's unique id for the row: a row whose `status_id` was taken before is
acknowledged and not applied again. `status` is a homecare-status code a provider reports, or
`cancel-refused` to refuse a cancellation. Times are ISO 8601 with an offset (`2026-11-23T09:00:00Z`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters.inbound import (
    DeliveryWindow,
    DispenseDetail,
    InboundFormatError,
    ProviderReport,
    ReportKind,
    checked_report,
)
from adapters.order_content import OrderContent, OrderLine

ORDER_FORMAT = "homecare-order/1"
STATUS_FORMAT = "homecare-status/1"
CANCEL_REFUSED = "cancel-refused"
ORDER_COLUMNS = (
    "format_version",
    "order_key",
    "message_type",
    "created_at",
    "short_form_id",
    "long_form_id",
    "trust_ods",
    "provider_ods",
    "item_identifier",
    "nhs_number",
    "family_name",
    "given_names",
    "name_prefix",
    "birth_date",
    "gender",
    "address",
    "postcode",
    "medication_code",
    "medication_name",
    "dose_value",
    "dose_unit",
    "route_code",
    "route_name",
    "dosage_text",
    "frequency",
    "period",
    "period_unit",
    "quantity_value",
    "quantity_unit_code",
    "quantity_unit",
    "valid_until",
    "cancel_reason_code",
    "cancel_reason",
)
STATUS_REQUIRED = ("format_version", "status_id", "short_form_id", "item_identifier", "status", "occurred_at")
STATUS_OPTIONAL = (
    "reason_code",
    "reason_text",
    "responsible_party",
    "delivery_window_start",
    "delivery_window_end",
    "delivery_attempt",
    "dispensed_code",
    "dispensed_name",
    "dispensed_quantity",
    "dispensed_unit",
    "batch",
    "expiry",
)
STATUS_COLUMNS = STATUS_REQUIRED + STATUS_OPTIONAL
MAX_STATUS_ROWS = 10_000


def order_csv(content: OrderContent, *, order_key: str, created_at: datetime) -> bytes:
    """The order file for one message: a header and one row per line item."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(ORDER_COLUMNS)
    for line in content.lines:
        writer.writerow(_order_row(content, line, order_key, created_at))
    return buffer.getvalue().encode("utf-8")


def _order_row(content: OrderContent, line: OrderLine, order_key: str, created_at: datetime) -> list[str]:
    patient = content.patient
    timing = line.timing

    def text(value: Any) -> str:
        return "" if value is None else str(value)

    return [
        ORDER_FORMAT,
        order_key,
        content.kind,
        created_at.isoformat(),
        content.short_form_id,
        text(content.long_form_id),
        content.sender_ods,
        content.provider_ods,
        line.item_identifier,
        patient.nhs_number if patient else "",
        text(patient.family if patient else None),
        " ".join(patient.given) if patient else "",
        text(patient.prefix if patient else None),
        text(patient.birth_date if patient else None),
        text(patient.gender if patient else None),
        ", ".join([*patient.address_lines, patient.city] if patient.city else patient.address_lines)
        if patient
        else "",
        text(patient.postcode if patient else None),
        text(line.medication.code),
        text(line.medication.display),
        text(line.dose_value),
        text(line.dose_unit.display or line.dose_unit.code if line.dose_unit else None),
        text(line.route.code if line.route else None),
        text(line.route.display if line.route else None),
        text(line.dosage_text),
        text(timing.frequency if timing else None),
        text(f"{timing.period:g}" if timing else None),
        text(timing.period_unit if timing else None),
        text(line.quantity_value),
        text(line.quantity_unit.code if line.quantity_unit else None),
        text(line.quantity_unit.display if line.quantity_unit else None),
        text(content.valid_until),
        text(line.cancel_reason.code if line.cancel_reason else None),
        text(line.cancel_reason.display if line.cancel_reason else None),
    ]


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One row of a status file, read and checked: its report and the row as a one-row CSV (kept as sent)."""

    number: int
    status_id: str
    report: ProviderReport
    raw: bytes


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int | None
    """The row number (1 is the first after the header); None for the file as a whole."""
    column: str | None
    problem: str

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "problem": self.problem}


class StatusFileError(ValueError):
    """A status file that cannot be taken; `problems` names every row and column at fault."""

    def __init__(self, problems: list[RowProblem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the status file")
        self.problems = problems


def read_status_file(data: bytes) -> list[StatusRow]:
    """Every row of a status file, or `StatusFileError` listing every problem (nothing is taken then)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StatusFileError([RowProblem(None, None, "the file is not UTF-8 text")]) from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise StatusFileError([RowProblem(reader.line_num, None, f"not valid CSV: {exc}")]) from exc
    if not rows:
        raise StatusFileError([RowProblem(None, None, "the file is empty: a header row is required")])
    header = [name.strip() for name in rows[0]]
    problems = _header_problems(header)
    if problems:
        raise StatusFileError(problems)
    if len(rows) - 1 > MAX_STATUS_ROWS:
        raise StatusFileError([RowProblem(None, None, f"more than {MAX_STATUS_ROWS} rows: split the file")])
    read: list[StatusRow] = []
    seen: dict[str, int] = {}
    for number, cells in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in cells):
            continue
        try:
            row = _status_row(number, header, cells)
        except _CellError as exc:
            problems.append(RowProblem(number, exc.column, exc.problem))
            continue
        if row.status_id in seen:
            problems.append(
                RowProblem(number, "status_id", f"repeats the status_id of row {seen[row.status_id]}")
            )
            continue
        seen[row.status_id] = number
        read.append(row)
    if problems:
        raise StatusFileError(problems)
    if not read:
        raise StatusFileError([RowProblem(None, None, "the file has a header but no rows")])
    return read


def _header_problems(header: list[str]) -> list[RowProblem]:
    problems = [
        RowProblem(0, name, "required column is missing") for name in STATUS_REQUIRED if name not in header
    ]
    problems += [
        RowProblem(0, name[:40], f"unknown column (a {STATUS_FORMAT} file has: {', '.join(STATUS_COLUMNS)})")
        for name in header
        if name not in STATUS_COLUMNS
    ]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    problems += [RowProblem(0, name, "column named twice") for name in duplicated]
    return problems


class _CellError(Exception):
    def __init__(self, column: str | None, problem: str) -> None:
        super().__init__(problem)
        self.column = column
        self.problem = problem


def _status_row(number: int, header: list[str], cells: list[str]) -> StatusRow:
    if len(cells) != len(header):
        raise _CellError(None, f"{len(cells)} cells where the header has {len(header)} columns")
    values = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}

    def value(name: str) -> str | None:
        return values.get(name) or None

    for name in STATUS_REQUIRED:
        if not value(name):
            raise _CellError(name, "required value is empty")
    if values["format_version"] != STATUS_FORMAT:
        raise _CellError("format_version", f"'{values['format_version'][:30]}' is not {STATUS_FORMAT}")
    status = values["status"]
    kind = ReportKind.CANCEL_REFUSED if status == CANCEL_REFUSED else ReportKind.STATUS
    report = ProviderReport(
        short_form_id=values["short_form_id"],
        item_identifier=values["item_identifier"],
        status=None if kind is ReportKind.CANCEL_REFUSED else status,
        occurred_at=_instant(values["occurred_at"], "occurred_at"),
        kind=kind,
        reason_code=value("reason_code"),
        reason_text=value("reason_text"),
        responsible_party=value("responsible_party"),
        delivery_window=_window(value("delivery_window_start"), value("delivery_window_end")),
        delivery_attempt=_attempt(value("delivery_attempt")),
        dispense=_dispense(values),
    )
    try:
        checked = checked_report(report)
    except InboundFormatError as exc:
        raise _CellError(None, exc.reason) from exc
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([header, cells])
    return StatusRow(number, values["status_id"], checked, buffer.getvalue().encode("utf-8"))


def _instant(text: str, column: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _CellError(column, f"'{text[:40]}' is not an ISO 8601 date and time") from exc
    if moment.tzinfo is None:
        raise _CellError(column, "the time has no offset (write Z or +01:00)")
    return moment


def _window(start: str | None, end: str | None) -> DeliveryWindow | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise _CellError("delivery_window_start", "a delivery window needs both its start and its end")
    return DeliveryWindow(_instant(start, "delivery_window_start"), _instant(end, "delivery_window_end"))


def _attempt(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 99:
        raise _CellError("delivery_attempt", f"'{text[:10]}' is not an attempt number (1 to 99)")
    return int(text)


def _dispense(values: dict[str, str]) -> DispenseDetail | None:
    names = ("dispensed_code", "dispensed_name", "dispensed_quantity", "dispensed_unit", "batch", "expiry")
    if not any(values.get(name) for name in names):
        return None
    return DispenseDetail(
        medication_code=values.get("dispensed_code") or None,
        medication_display=values.get("dispensed_name") or None,
        quantity=values.get("dispensed_quantity") or None,
        unit=values.get("dispensed_unit") or None,
        batch=values.get("batch") or None,
        expiry=values.get("expiry") or None,
    )


def status_csv(rows: list[dict[str, str]]) -> bytes:
    """A status file from rows of column values (what a provider writes; used by the simulator)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STATUS_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({"format_version": STATUS_FORMAT, **row})
    return buffer.getvalue().encode("utf-8")


def read_order_file(data: bytes) -> list[dict[str, str]]:
    """The rows of an order file (what a provider reads; used by the simulator)."""
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
