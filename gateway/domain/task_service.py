"""The Task API's services: provider status reports (one Task or a transaction of up to 50), reads,
searches with keyset paging, and each item's timeline (`_history`). Every call is audited."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, and_, or_, select

from auth.audit import Action, AuditRecord, Outcome, append
from auth.identity import Caller
from auth.tenancy import visible_filter
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from fhir_profiles.status_task import read_status_task
from gateway.clock import Clock
from gateway.domain import access
from gateway.domain.queries import record_query_message
from gateway.domain.status import DEFINITIONS, STATUS_SYSTEM, Status, Verdict, task_status
from gateway.domain.status_updates import Applied, apply_report, not_found
from gateway.domain.tasks import VERDICT_URL, fhir_instant, render_task
from gateway.store import status as store
from gateway.store.db import Database

MAX_TRANSACTION = 50
DEFAULT_COUNT = 50
MAX_COUNT = 200


@dataclass(frozen=True, slots=True)
class TaskWrite:
    """One Task a provider sent: PUT to an id, or POST (the Task says which item)."""

    task: Any
    item_id: str | None
    expression: str


def report_statuses(
    db: Database,
    *,
    caller: Caller,
    writes: list[TaskWrite],
    request_id: str,
    clock: Clock,
    notify: Any = None,
) -> list[Applied]:
    """Apply every report in one transaction: all of them, or (with every problem named) none."""
    if len(writes) > MAX_TRANSACTION:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.TOO_LONG,
                    ErrorCode.INVALID_VALUE,
                    f"A transaction carries at most {MAX_TRANSACTION} Tasks; this one has {len(writes)}",
                    "Bundle.entry",
                )
            ],
        )
    reports = []
    issues: list[Issue] = []
    for write in writes:
        report, problems = read_status_task(write.task, base=write.expression)
        issues.extend(problems)
        reports.append(report)
    if issues:
        _audit_refusal(db, caller, request_id, clock, status=400)
        raise OperationOutcomeError(400, issues)
    now = clock()
    applied: list[Applied] = []
    failures: list[OperationOutcomeError] = []
    try:
        with db.write_connection() as connection:
            for write, report in zip(writes, reports, strict=True):
                assert report is not None
                try:
                    result = apply_report(
                        connection,
                        caller=caller,
                        report=report,
                        item_id=write.item_id,
                        now=now,
                        expression=f"{write.expression}.businessStatus",
                        for_update=not db.is_sqlite,
                    )
                except OperationOutcomeError as refusal:
                    failures.append(refusal)
                    continue
                applied.append(result)
                if report.status == Status.QUERY.value and result.verdict is Verdict.APPLIED:
                    question = report.detail.get("note") or (report.detail.get("reason") or {}).get("text")
                    record_query_message(
                        connection,
                        result.view,
                        author_role="provider",
                        author_ods=caller.ods_code,
                        text=str(question or "Query raised (no text given)"),
                        sent_at=report.occurred_at,
                        request_id=request_id,
                    )
                if notify is not None:
                    notify(connection, result, now)
            if failures:
                raise _Rollback
            append(
                connection,
                [
                    AuditRecord.by(
                        caller,
                        action=Action.UPDATE,
                        outcome=Outcome.SUCCESS,
                        occurred_at=now,
                        request_id=request_id,
                        resource_type="Task",
                        resource_id=result.view.item_id,
                        status=200,
                        reason=result.verdict.value,
                    )
                    for result in applied
                ],
            )
    except _Rollback:
        status = max(failure.status_code for failure in failures)
        _audit_refusal(db, caller, request_id, clock, status=status)
        raise OperationOutcomeError(
            status, [issue for failure in failures for issue in failure.issues]
        ) from None
    return applied


class _Rollback(Exception):  # noqa: N818  (control flow inside this module only)
    pass


def _audit_refusal(db: Database, caller: Caller, request_id: str, clock: Clock, *, status: int) -> None:
    access.record(
        db,
        caller=caller,
        action=Action.UPDATE,
        outcome=Outcome.REFUSED if status != 404 else Outcome.NOT_FOUND,
        resource_type="Task",
        resource_id=None,
        status=status,
        request_id=request_id,
        clock=clock,
    )


def _visible(caller: Caller) -> Any:
    return visible_filter(
        caller, tenant_column=store.item_table.c.tenant_ods, provider_column=store.item_table.c.provider_ods
    )


def read_task(db: Database, *, caller: Caller, item_id: str, request_id: str, clock: Clock) -> dict[str, Any]:
    with db.read() as session:
        connection = session.connection()
        row = connection.execute(
            store.views_query().where(store.item_by_id(item_id), _visible(caller))
        ).first()
        detail = store.latest_detail(connection, item_id) if row else None
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Task",
        resource_id=item_id,
        found=row is not None,
        request_id=request_id,
        clock=clock,
    )
    if row is None:
        raise not_found()
    return render_task(store.view_from_row(row), detail=detail)


def task_history(
    db: Database, *, caller: Caller, item_id: str, base_url: str, request_id: str, clock: Clock
) -> dict[str, Any]:
    """Every event of the item, oldest first: the gateway's, the provider's and the trust's."""
    with db.read() as session:
        connection = session.connection()
        row = connection.execute(
            store.views_query().where(store.item_by_id(item_id), _visible(caller))
        ).first()
        events = _events(connection, item_id) if row else []
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Task",
        resource_id=item_id,
        found=row is not None,
        request_id=request_id,
        clock=clock,
        reason="history",
    )
    if row is None:
        raise not_found()
    view = store.view_from_row(row)
    entries = []
    for version, event in enumerate(events, start=1):
        snapshot = render_task(view, detail=event["detail"])
        status = Status(event["status"])
        snapshot["meta"] = {"versionId": str(version), "lastUpdated": fhir_instant(event["recorded_at"])}
        snapshot["status"] = task_status(status)
        snapshot["businessStatus"] = {
            "coding": [{"system": STATUS_SYSTEM, "code": status.value, "display": DEFINITIONS[status]}]
        }
        snapshot["lastModified"] = fhir_instant(event["occurred_at"])
        snapshot["extension"].append(
            {
                "url": VERDICT_URL,
                "extension": [
                    {"url": "verdict", "valueCode": event["verdict"] or "applied"},
                    {"url": "source", "valueString": event["source"]},
                ],
            }
        )
        entries.append(
            {
                "fullUrl": f"{base_url}/fhir/Task/{item_id}/_history/{version}",
                "resource": snapshot,
                "request": {"method": "PUT", "url": f"Task/{item_id}"},
                "response": {"status": "200", "lastModified": fhir_instant(event["recorded_at"])},
            }
        )
    return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}


def _events(connection: Connection, item_id: str) -> list[dict[str, Any]]:
    item = connection.execute(
        select(store.item_table.c.prescription_id).where(store.item_table.c.id == item_id)
    ).scalar_one()
    event = store.event_table
    rows = connection.execute(
        select(
            event.c.status,
            event.c.occurred_at,
            event.c.recorded_at,
            event.c.source,
            event.c.detail,
            event.c.verdict,
        )
        .where(event.c.prescription_id == item, or_(event.c.item_id == item_id, event.c.item_id.is_(None)))
        .order_by(event.c.id)
    ).all()
    return [
        {
            "status": row[0],
            "occurred_at": row[1],
            "recorded_at": row[2],
            "source": row[3],
            "detail": row[4] if isinstance(row[4], dict) else {},
            "verdict": row[5],
        }
        for row in rows
    ]


# --- Search -------------------------------------------------------------------------------------

SEARCH_PARAMETERS = frozenset(
    {
        "owner",
        "requester",
        "business-status",
        "focus:identifier",
        "based-on:identifier",
        "patient:identifier",
        "_lastUpdated",
        "_count",
        "_sort",
        "_page_token",
    }
)
_PREFIXES = {"gt": "__gt__", "ge": "__ge__", "lt": "__lt__", "le": "__le__", "eq": "__eq__"}


def _bad(parameter: str, diagnostics: str) -> Issue:
    return Issue(IssueType.VALUE, ErrorCode.INVALID_VALUE, diagnostics, parameter)


def _token_value(value: str) -> str:
    """`system|value` or `value`: the value (systems are implied by the parameter)."""
    return value.rpartition("|")[2]


def search_tasks(
    db: Database,
    *,
    caller: Caller,
    parameters: list[tuple[str, str]],
    patient_allowed: bool,
    self_url: str,
    next_url: str,
    request_id: str,
    clock: Clock,
) -> dict[str, Any]:
    """A searchset of the caller's Tasks, newest change first, with a keyset `next` link."""
    item, prescription = store.item_table, store.prescription_table
    conditions: list[Any] = [_visible(caller)]
    issues: list[Issue] = []
    count = DEFAULT_COUNT
    newest_first = True
    cursor: tuple[datetime, str] | None = None
    for name, value in parameters:
        if name not in SEARCH_PARAMETERS:
            issues.append(
                Issue(
                    IssueType.NOT_SUPPORTED,
                    ErrorCode.INVALID_VALUE,
                    f"Search parameter '{name[:64]}' is not supported; use "
                    + ", ".join(sorted(SEARCH_PARAMETERS)),
                    name[:64],
                )
            )
        elif name == "owner":
            conditions.append(item.c.provider_ods == _token_value(value))
        elif name == "requester":
            conditions.append(item.c.tenant_ods == _token_value(value))
        elif name == "business-status":
            wanted = [_token_value(code) for code in value.split(",")]
            unknown = [code for code in wanted if code not in Status.__members__.values()]
            if unknown:
                issues.append(_bad(name, f"Unknown business status '{unknown[0][:32]}'"))
            conditions.append(item.c.status.in_(wanted))
        elif name == "focus:identifier":
            conditions.append(item.c.item_identifier == _token_value(value))
        elif name == "based-on:identifier":
            conditions.append(prescription.c.short_form_id == _token_value(value))
        elif name == "patient:identifier":
            if not patient_allowed:
                issues.append(
                    _bad(
                        name,
                        "Search by NHS number with POST /fhir/Task/_search (form body): "
                        "patient data never goes in a URL",
                    )
                )
            conditions.append(prescription.c.nhs_number == _token_value(value))
        elif name == "_lastUpdated":
            condition = _last_updated(value)
            if condition is None:
                issues.append(
                    _bad(name, "_lastUpdated is a prefix (gt, ge, lt, le, eq) and a date-time with zone")
                )
            else:
                conditions.append(condition)
        elif name == "_count":
            if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_COUNT:
                issues.append(_bad(name, f"_count is a whole number from 1 to {MAX_COUNT}"))
            else:
                count = int(value)
        elif name == "_sort":
            if value not in ("_lastUpdated", "-_lastUpdated"):
                issues.append(_bad(name, "_sort is _lastUpdated or -_lastUpdated"))
            newest_first = value.startswith("-")
        elif name == "_page_token":
            cursor = _read_cursor(value)
            if cursor is None:
                issues.append(_bad(name, "The page token is not one this gateway gave"))
    if issues:
        raise OperationOutcomeError(400, issues)
    if cursor is not None:
        moment, last_id = cursor
        if newest_first:
            conditions.append(
                or_(item.c.updated_at < moment, and_(item.c.updated_at == moment, item.c.id < last_id))
            )
        else:
            conditions.append(
                or_(item.c.updated_at > moment, and_(item.c.updated_at == moment, item.c.id > last_id))
            )
    order = (item.c.updated_at.desc(), item.c.id.desc()) if newest_first else (item.c.updated_at, item.c.id)
    with db.read() as session:
        rows = (
            session.connection()
            .execute(store.views_query().where(*conditions).order_by(*order).limit(count + 1))
            .all()
        )
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Task",
        resource_id=None,
        found=True,
        request_id=request_id,
        clock=clock,
        action=Action.SEARCH,
    )
    views = [store.view_from_row(row) for row in rows[:count]]
    links = [{"relation": "self", "url": self_url}]
    if len(rows) > count:
        last = views[-1]
        separator = "&" if "?" in next_url else "?"
        links.append(
            {
                "relation": "next",
                "url": f"{next_url}{separator}_page_token={_write_cursor(last.updated_at, last.item_id)}",
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"Task/{view.item_id}",
                "resource": render_task(view),
                "search": {"mode": "match"},
            }
            for view in views
        ],
    }


def _last_updated(value: str) -> Any:
    prefix, moment_text = value[:2], value[2:]
    if prefix not in _PREFIXES:
        prefix, moment_text = "eq", value
    try:
        moment = datetime.fromisoformat(moment_text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    column = store.item_table.c.updated_at
    return {
        "gt": column > moment,
        "ge": column >= moment,
        "lt": column < moment,
        "le": column <= moment,
        "eq": column == moment,
    }[prefix]


def _write_cursor(moment: datetime, item_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([moment.isoformat(), item_id])).decode().rstrip("=")


def _read_cursor(token: str) -> tuple[datetime, str] | None:
    try:
        moment, item_id = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        parsed = datetime.fromisoformat(moment)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        return None
    if parsed.tzinfo is None or not isinstance(item_id, str):
        return None
    return parsed, item_id
