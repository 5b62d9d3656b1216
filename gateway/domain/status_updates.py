"""Applying status reports to line items: the state machine, tenancy, the log and the Task answer.

Every report is kept in the append-only event log with its verdict (applied, duplicate,
superseded); an illegal one is refused with both statuses named and changes nothing. Updates are
replayed in the order they happened (`lastModified`), so the order they arrive in does not matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from auth.identity import Caller, Role
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from fhir_profiles.status_task import StatusReport
from gateway.domain.status import (
    IllegalTransition,
    ItemState,
    Status,
    StatusUpdate,
    Verdict,
    admit_update,
)
from gateway.domain.tasks import ItemView, render_task
from gateway.store import status as store

# Statuses the gateway sets before a provider ever had the order, or instead of it: a provider's
# report cannot follow them.
_GATEWAY_FINAL = frozenset({Status.CANCELLED, Status.REJECTED, Status.EXPIRED})


@dataclass(frozen=True, slots=True)
class Applied:
    task: dict[str, Any]
    verdict: Verdict
    view: ItemView


StatusListener = Callable[[Connection, Applied, datetime], None]


def provider_source(ods: str) -> str:
    return f"provider:{ods}"


def trust_source(ods: str) -> str:
    return f"trust:{ods}"


def not_found() -> OperationOutcomeError:
    return OperationOutcomeError(
        404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, "No line item (Task) with this identity")]
    )


def illegal(exc: IllegalTransition, expression: str | None) -> OperationOutcomeError:
    return OperationOutcomeError(
        409,
        [
            Issue(
                IssueType.BUSINESS_RULE,
                ErrorCode.NOT_ALLOWED,
                f"The item is '{exc.current}' and cannot become '{exc.requested}'",
                expression,
            )
        ],
    )


def apply_report(
    connection: Connection,
    *,
    caller: Caller,
    report: StatusReport,
    item_id: str | None,
    now: datetime,
    expression: str | None = "Task.businessStatus",
    for_update: bool = True,
) -> Applied:
    """A provider's report about one of the items routed to it."""
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
    condition = (
        store.item_by_id(item_id)
        if item_id is not None
        else store.item_by_reference(report.short_form_id, report.item_identifier, caller.ods_code)
    )
    found = store.lock_item(connection, condition, for_update=for_update)
    if found is None or found[0].provider_ods != caller.ods_code:
        raise not_found()
    view, _ = found
    if item_id is not None and (
        view.short_form_id != report.short_form_id or view.item_identifier != report.item_identifier
    ):
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
    return change_item(
        connection,
        view,
        status=Status(report.status),
        occurred_at=report.occurred_at,
        source=provider_source(caller.ods_code),
        detail=report.detail,
        now=now,
        expression=expression,
    )


def change_item(
    connection: Connection,
    view: ItemView,
    *,
    status: Status,
    occurred_at: datetime,
    source: str,
    detail: dict[str, Any],
    now: datetime,
    expression: str | None,
    notify: StatusListener | None = None,
) -> Applied:
    """One update to one locked item, judged against everything the item has been through.

    The listener (subscriptions hang off it) hears the change in the same transaction.
    """
    if Status(view.status) in _GATEWAY_FINAL and not store.item_history(connection, view.item_id):
        raise illegal(IllegalTransition(Status(view.status), status), expression)
    history = store.item_history(connection, view.item_id)
    update = StatusUpdate(status, occurred_at, source, store.next_sequence(connection))
    try:
        state, verdict = admit_update(ItemState(Status.SENT), history, update)
    except IllegalTransition as exc:
        raise illegal(exc, expression) from exc
    changed = store.record_item_update(
        connection,
        view,
        status=state.status,
        resume=state.resume,
        update_status=status,
        occurred_at=occurred_at,
        source=source,
        verdict=verdict,
        detail=detail,
        now=now,
    )
    task = render_task(changed, detail=store.latest_detail(connection, view.item_id))
    applied = Applied(task=task, verdict=verdict, view=changed)
    if notify is not None:
        notify(connection, applied, now)
    return applied
