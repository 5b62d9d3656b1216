"""Providers' status reports: one Task (POST, or PUT to its id) or a transaction of up to 50, applied
all together or (with every problem named) not at all, each through the status authority. A query
raised starts the item's query thread. Every call is audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller, Role
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from fhir_profiles.status_task import StatusReport, read_status_task
from gateway.domain import access, pull
from gateway.domain.context import Context
from gateway.domain.provider_queries import record_query_message
from gateway.domain.reads import item_not_found
from gateway.domain.status import Status, Verdict, provider_source
from gateway.domain.status_authority import Applied, change_status
from gateway.store import audit, items
from gateway.store.db import Tx
from gateway.store.items import ItemKey, ItemView

MAX_TRANSACTION = 50


@dataclass(frozen=True, slots=True)
class TaskWrite:
    """One Task a provider sent: PUT to an id, or POST (the Task says which item)."""

    task: Any
    item_id: str | None
    expression: str


class _Refused(Exception):  # noqa: N818  (rolls the transaction back; the refusals are raised after)
    pass


def report_statuses(
    ctx: Context, *, caller: Caller, writes: list[TaskWrite], request_id: str
) -> list[Applied]:
    """Apply every report in one transaction: all of them, or (with every problem named) none."""
    reports = _read_reports(ctx, caller, writes, request_id)
    now = ctx.clock()
    applied: list[Applied] = []
    refusals: list[OperationOutcomeError] = []
    try:
        with ctx.db.transaction() as tx:
            for write, report in zip(writes, reports, strict=True):
                try:
                    applied.append(_apply(ctx, tx, caller, write, report, now=now, request_id=request_id))
                except OperationOutcomeError as refusal:
                    refusals.append(refusal)
            if refusals:
                raise _Refused
            audit.record(
                tx, [_audit_entry(caller, result, request_id=request_id, now=now) for result in applied]
            )
    except _Refused:
        status = max(refusal.status_code for refusal in refusals)
        _audit_refusal(ctx, caller, request_id, status=status)
        raise OperationOutcomeError(
            status, [issue for refusal in refusals for issue in refusal.issues]
        ) from None
    return applied


def _read_reports(
    ctx: Context, caller: Caller, writes: list[TaskWrite], request_id: str
) -> list[StatusReport]:
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
    reports: list[StatusReport] = []
    issues: list[Issue] = []
    for write in writes:
        report, problems = read_status_task(write.task, base=write.expression)
        issues.extend(problems)
        if report is not None:
            reports.append(report)
    if issues:
        _audit_refusal(ctx, caller, request_id, status=400)
        raise OperationOutcomeError(400, issues)
    return reports


def _apply(
    ctx: Context,
    tx: Tx,
    caller: Caller,
    write: TaskWrite,
    report: StatusReport,
    *,
    now: datetime,
    request_id: str,
) -> Applied:
    """A provider's report about one of the items routed to it (the first about an order it pulled
    records `sent` before it)."""
    view = pull.record_pulled(ctx, tx, _reported_item(tx, caller, write, report), now=now)
    answering_cancel = Status(view.status) is Status.CANCEL_REQUESTED
    result = change_status(
        tx,
        view,
        Status(report.status),
        source=provider_source(caller.ods_code),
        occurred_at=report.occurred_at,
        detail=report.detail,
        now=now,
        listener=ctx.listener,
        expression=f"{write.expression}.businessStatus",
    )
    if answering_cancel:
        pull.after_report(tx, result.view, now=now)
    if report.status == Status.QUERY.value and result.verdict is Verdict.APPLIED:
        question = report.detail.get("note") or (report.detail.get("reason") or {}).get("text")
        record_query_message(
            tx,
            result.view,
            author_role="provider",
            author_ods=caller.ods_code,
            text=str(question or "Query raised (no text given)"),
            sent_at=report.occurred_at,
            request_id=request_id,
        )
    return result


def _reported_item(tx: Tx, caller: Caller, write: TaskWrite, report: StatusReport) -> ItemView:
    """The item the report is about, if it was routed to the caller (its owner), locked for the change."""
    if caller.role is not Role.PROVIDER or report.owner_ods != caller.ods_code:
        raise OperationOutcomeError(
            403,
            [
                Issue(
                    IssueType.FORBIDDEN,
                    ErrorCode.ACCESS_DENIED,
                    "Only the provider a prescription was routed to reports its status, as Task.owner",
                    "Task.owner.identifier.value",
                )
            ],
        )
    key = (
        ItemKey.by_id(write.item_id)
        if write.item_id is not None
        else ItemKey.at_provider(report.short_form_id, report.item_identifier, caller.ods_code)
    )
    view = items.find(tx, key, caller=caller, for_change=True)
    if view is None:
        raise item_not_found()
    if view.short_form_id != report.short_form_id or view.item_identifier != report.item_identifier:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.INVALID,
                    ErrorCode.INVALID_VALUE,
                    "The Task's basedOn and focus do not name the item with this id",
                    "Task.focus.identifier",
                )
            ],
        )
    return view


def _audit_entry(caller: Caller, result: Applied, *, request_id: str, now: datetime) -> AuditRecord:
    return AuditRecord.by(
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


def _audit_refusal(ctx: Context, caller: Caller, request_id: str, *, status: int) -> None:
    access.record(
        ctx.db,
        caller=caller,
        action=Action.UPDATE,
        outcome=Outcome.REFUSED if status != 404 else Outcome.NOT_FOUND,
        resource_type="Task",
        resource_id=None,
        status=status,
        request_id=request_id,
        clock=ctx.clock,
    )
