"""Access decisions made for a caller, and the audit rows that record them.

A write's audit row goes into the write's own transaction (see intake); everything else (reads,
refusals, replayed answers) is recorded here in a small transaction of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller
from auth.scopes import Scope
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.clock import Clock
from gateway.store import audit
from gateway.store.db import Database, Tx

T = TypeVar("T")

_ACTIONS = {
    "c": Action.CREATE,
    "r": Action.READ,
    "u": Action.UPDATE,
    "d": Action.DELETE,
    "s": Action.SEARCH,
}


def record(
    db: Database,
    *,
    caller: Caller,
    action: Action,
    outcome: Outcome,
    resource_type: str | None,
    resource_id: str | None,
    status: int,
    request_id: str,
    clock: Clock,
    reason: str | None = None,
) -> None:
    entry = AuditRecord.by(
        caller,
        action=action,
        outcome=outcome,
        occurred_at=clock(),
        request_id=request_id,
        resource_type=resource_type,
        resource_id=resource_id,
        status=status,
        reason=reason,
    )
    with db.transaction() as tx:
        audit.record(tx, [entry])


def record_lookup(
    db: Database,
    *,
    caller: Caller,
    resource_type: str,
    resource_id: str | None,
    found: bool,
    request_id: str,
    clock: Clock,
    action: Action = Action.READ,
    reason: str | None = None,
) -> None:
    """Audit a read or a search: found (200), or not there for this caller (404)."""
    record(
        db,
        caller=caller,
        action=action,
        outcome=Outcome.SUCCESS if found else Outcome.NOT_FOUND,
        resource_type=resource_type,
        resource_id=resource_id,
        status=200 if found else 404,
        request_id=request_id,
        clock=clock,
        reason=reason,
    )


def audited_lookup(
    db: Database,
    find: Callable[[Tx], T | None],
    *,
    caller: Caller,
    resource_type: str,
    resource_id: str,
    request_id: str,
    clock: Clock,
    missing: Callable[[], OperationOutcomeError],
) -> T:
    """Read one thing as the caller may see it, audit the read, and answer `missing()` when it is not there
    (for this caller: another organisation's answers exactly as a missing one)."""
    with db.snapshot() as tx:
        found = find(tx)
    record_lookup(
        db,
        caller=caller,
        resource_type=resource_type,
        resource_id=resource_id,
        found=found is not None,
        request_id=request_id,
        clock=clock,
    )
    if found is None:
        raise missing()
    return found


def missing_scope_error(missing: Sequence[str]) -> OperationOutcomeError:
    return OperationOutcomeError(
        403,
        [
            Issue(
                IssueType.FORBIDDEN,
                ErrorCode.ACCESS_DENIED,
                f"The access token does not grant {' '.join(missing)}, which this request needs",
            )
        ],
    )


def missing_scope_audit(needed: Scope) -> tuple[Action, str | None]:
    """What a request refused for want of `needed` asked to do, and to which resource type."""
    first = next(letter for letter in "cruds" if letter in needed.permissions)
    return _ACTIONS[first], None if needed.resource == "*" else needed.resource
