"""The `csv-drop` transport on a local folder (README `csv-drop`): one `homecare-order/1` file per
message, named by its key, written under a dot name, fsynced and linked to its final name (never
replacing a file there); the acknowledgement is the provider picking it up (the file leaves the order
folder). Status comes back as `homecare-status/1` files in the status folder, which the suite reads
(rows de-duplicated by `status_id`) and moves to `done/`, as the gateway's poller does. SFTP is not
covered: point the suite at the folder itself."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from conformance.config import ConfigError, ProviderConfig
from conformance.messages import Message
from conformance.model import Evidence, Exchange
from conformance.roles.provider.base import (
    Acknowledgement,
    ReportSink,
    StatusReport,
    order_facts,
    report_task,
)

ORDER_FORMAT = "homecare-order/1"
STATUS_FORMAT = "homecare-status/1"
# README `csv-drop` / the homecare-order/1 column set, in order.
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
POLL_SECONDS = 0.05


def folder_of(target: str) -> Path:
    parts = urlsplit(target)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
    elif parts.scheme == "" or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
        path = Path(target)
    else:
        raise ConfigError(
            f"provider role (csv-drop): --target must be a folder (file:///path or a path); got {target!r}"
        )
    if not path.is_dir():
        raise ConfigError(f"provider role (csv-drop): the folder {path} does not exist")
    return path.resolve()


def order_csv(message: Message, *, key: str, invalid: bool) -> bytes:
    """The order file: a header and one row per item. `invalid` leaves out the required short_form_id column."""
    facts = order_facts(message)
    columns = [c for c in ORDER_COLUMNS if not (invalid and c == "short_form_id")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n", extrasaction="ignore")
    writer.writeheader()
    for line in facts.lines:
        writer.writerow(
            {
                "format_version": ORDER_FORMAT,
                "order_key": key,
                "message_type": facts.kind,
                "created_at": datetime.now(UTC).isoformat(),
                "short_form_id": facts.short_form_id,
                "long_form_id": facts.long_form_id,
                "trust_ods": facts.trust_ods,
                "provider_ods": facts.provider_ods,
                "item_identifier": line.item_identifier,
                "nhs_number": facts.nhs_number,
                "family_name": facts.family_name,
                "given_names": " ".join(facts.given_names),
                "birth_date": facts.birth_date,
                "gender": facts.gender,
                "postcode": facts.postcode,
                "medication_code": line.medication_code,
                "medication_name": line.medication_name,
                "dosage_text": line.dosage_text,
                "quantity_value": line.quantity_value,
                "quantity_unit": line.quantity_unit,
                "cancel_reason_code": line.cancel_reason_code,
                "cancel_reason": line.cancel_reason,
            }
        )
    return buffer.getvalue().encode("utf-8")


def write_once(folder: Path, name: str, data: bytes) -> bool:
    """Write `name` atomically without replacing a file of that name; False when one is there."""
    temporary = folder / f".{name}.{os.getpid()}.tmp"
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, folder / name)
        written = True
    except FileExistsError:
        written = False
    finally:
        temporary.unlink()
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return written


class CsvDropTransport:
    scheme: ClassVar[str] = "csv-drop"
    status_over_http: ClassVar[bool] = False
    refusals_answered: ClassVar[bool] = False
    same_second_reports: ClassVar[bool] = False
    invalid_order: ClassVar[str] = "an order file without its required short_form_id column"

    def __init__(self, target: str, config: ProviderConfig, sends: Evidence) -> None:
        self.root = folder_of(target)
        self.order_dir = self.root / config.order_dir
        self.status_dir = self.root / config.status_dir
        for folder in (self.order_dir, self.status_dir):
            if not folder.is_dir():
                raise ConfigError(f"provider role (csv-drop): the folder {folder} does not exist")
        self.config = config
        self.sends = sends
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: set[str] = set()

    @property
    def status_address(self) -> str:
        return str(self.status_dir)

    def open(self, sink: ReportSink, listen: tuple[str, int] | None) -> None:
        self._thread = threading.Thread(target=self._poll, args=(sink,), name="conformance-csv", daemon=True)
        self._thread.start()

    def send(
        self, message: Message, *, idempotency_key: str, request_id: str, invalid: bool = False
    ) -> Acknowledgement:
        name = f"{idempotency_key}.csv"
        data = order_csv(message, key=idempotency_key, invalid=invalid)
        written = write_once(self.order_dir, name, data)
        path = self.order_dir / name
        deadline = time.monotonic() + self.config.ack_timeout_seconds
        while path.exists() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        picked_up = not path.exists()
        code = "picked up" if picked_up else f"not picked up within {self.config.ack_timeout_seconds:g} s"
        exchange = Exchange(
            direction="sent",
            method="FILE",
            url=path.as_uri(),
            request_headers={},
            request_body=data.decode("utf-8"),
            status=None,
            response_headers={},
            response_body=code if written else f"{code} (a file of that name was there already)",
        )
        self.sends.exchanges.append(exchange)
        return Acknowledgement(code, accepted=picked_up, exchange=exchange)

    def _poll(self, sink: ReportSink) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self._read_folder(sink)
            self._stop.wait(POLL_SECONDS)

    def _read_folder(self, sink: ReportSink) -> None:
        names = sorted(
            entry.name
            for entry in os.scandir(self.status_dir)
            if entry.is_file() and entry.name.endswith(".csv") and not entry.name.startswith(".")
        )
        for name in names:
            path = self.status_dir / name
            data = path.read_bytes()
            reports, problem = self._rows(data)
            done = self.status_dir / ("error" if problem else "done")
            done.mkdir(exist_ok=True)
            path.replace(done / name)
            sink(
                reports,
                Exchange(
                    direction="received",
                    method="FILE",
                    url=path.as_uri(),
                    request_headers={},
                    request_body=data.decode("utf-8", errors="replace"),
                    status=None,
                    response_headers={},
                    response_body=f"moved to {done.name}/" + (f": {problem}" if problem else ""),
                ),
            )

    def _rows(self, data: bytes) -> tuple[list[StatusReport], str | None]:
        try:
            rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline=""), strict=True))
        except (UnicodeDecodeError, csv.Error) as exc:
            return [], f"not a UTF-8 CSV file: {exc}"
        header = set(rows[0]) if rows else set()
        missing = [c for c in STATUS_REQUIRED if c not in header]
        at = time.monotonic()
        reports = []
        for number, row in enumerate(rows, start=1):
            if not row.get("item_identifier"):
                continue
            problem = None
            if missing:
                problem = f"the status file has no column {', '.join(missing)} (README csv-drop)"
            elif row["format_version"] != STATUS_FORMAT:
                problem = f"row {number}: format_version {row['format_version']!r} is not {STATUS_FORMAT}"
            elif not row.get("status_id"):
                problem = f"row {number}: status_id is empty"
            if problem is None and row["status_id"] in self._seen:
                continue  # a row seen before is acknowledged and not applied again
            if problem is None:
                self._seen.add(row["status_id"])
            occurred = _instant(row.get("occurred_at") or "")
            if problem is None and occurred is None:
                problem = (
                    f"row {number}: occurred_at {row.get('occurred_at')!r} is not ISO 8601 with an offset"
                )
            status = row.get("status") or None
            task = report_task(
                short_form_id=row.get("short_form_id") or "",
                item=row["item_identifier"],
                status=status,
                occurred_at=occurred,
                owner_ods=self.config.ods or "",
                reason_code=row.get("reason_code") or None,
                reason_text=row.get("reason_text") or None,
            )
            reports.append(StatusReport(task, True, at, problem))
        return reports, (f"missing columns {', '.join(missing)}" if missing else None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
