"""Subscriptions as a trust manages them, and the notifications a status change queues for them.

A trust (its systems and clinician apps) subscribes to the status of its own prescriptions only:
every query carries the caller's ODS code, so another trust's subscription answers as a missing one
does (404). Every create, read, search and delete is audited; a write's audit row is written in the
write's own transaction.

`enqueue_notifications` is called by status intake inside the transaction that changes a line item,
so a notification exists exactly when the change does, and carries the Task as it was then.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, update

from auth.audit import Action, AuditRecord, Outcome, append
from auth.identity import Caller, Role
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.clock import Clock
from gateway.dispatch.outbox import DEAD, PENDING
from gateway.domain import access
from gateway.domain.status import Verdict
from gateway.domain.status_updates import Applied
from gateway.logs import get_logger
from gateway.notify.criteria import CriteriaError, parse_criteria
from gateway.notify.endpoints import EndpointPolicy
from gateway.notify.subscription import check_subscription, subscription_resource
from gateway.store import subscriptions as store
from gateway.store.db import Database
from gateway.store.models import OutboxMessage

RESOURCE_TYPE = "Subscription"
NOTIFICATION_KIND = "notification"
NOTIFICATION_KEY_PREFIX = "notification-"
# Who may subscribe: the systems of a trust. A provider learns of its orders through its adapter.
SUBSCRIBER_ROLES = frozenset({Role.TRUST, Role.CLINICIAN_APP})

_outbox = OutboxMessage.__table__  # type: ignore[attr-defined]
log = get_logger("gateway.notify")


def ordering_key(subscription_id: str) -> str:
    """One subscriber's notifications go out one at a time, in order; never behind provider sends."""
    return f"sub:{subscription_id}"


def enqueue_notifications(
    connection: Connection,
    *,
    tenant_ods: str,
    provider_ods: str,
    prescription_id: str,
    task: dict[str, Any],
    business_status: str,
    now: datetime,
) -> int:
    """Queue one notification per active subscription of `tenant_ods` whose criteria match this
    change; returns how many. Call it in the transaction that makes the change, and ring the
    dispatcher's doorbell after the commit as intake does.

    Each notification carries the Task's JSON bytes as they are now (or nothing, for subscriptions
    without a payload), so a subscriber sees every state in the order the changes were made.
    """
    matching: list[tuple[str, str | None]] = []
    for subscription_id, criteria, payload_type in store.active_subscriptions(
        connection, tenant_ods=tenant_ods, now=now
    ):
        try:
            wanted = parse_criteria(criteria).matches(owner_ods=provider_ods, business_status=business_status)
        except CriteriaError:
            # Checked when it was created; if a later release reads it differently, the status change
            # must still be recorded. The subscriber is told nothing rather than something wrong.
            log.warning("subscription_criteria_unusable", subscription_id=subscription_id)
            continue
        if wanted:
            matching.append((subscription_id, payload_type))
    if not matching:
        return 0
    snapshot = orjson.dumps(task)
    connection.execute(
        insert(_outbox),
        [
            {
                "prescription_id": prescription_id,
                "kind": NOTIFICATION_KIND,
                "provider_ods": provider_ods,
                "idempotency_key": f"{NOTIFICATION_KEY_PREFIX}{uuid.uuid4()}",
                "ordering_key": ordering_key(subscription_id),
                "subscription_id": subscription_id,
                "payload": snapshot if payload_type else None,
                "state": PENDING,
                "attempts": 0,
                "due_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for subscription_id, payload_type in matching
        ],
    )
    return len(matching)


def kill_pending_notifications(
    connection: Connection, subscription_id: str, *, now: datetime, reason: str
) -> int:
    """Queued notifications that will never be sent (the subscription is off or in error): dead."""
    # A notification being sent at this moment keeps its lease; its result is recorded as usual.
    return int(
        connection.execute(
            update(_outbox)
            .where(_outbox.c.subscription_id == subscription_id, _outbox.c.state == PENDING)
            .values(state=DEAD, last_error=reason[:500], updated_at=now)
        ).rowcount
    )


@dataclass(frozen=True, slots=True)
class Created:
    resource: dict[str, Any]
    location: str


def _not_found() -> OperationOutcomeError:
    return OperationOutcomeError(
        404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, "No Subscription with this id")]
    )


def _forbidden_role(caller: Caller) -> OperationOutcomeError:
    return OperationOutcomeError(
        403,
        [
            Issue(
                IssueType.FORBIDDEN,
                ErrorCode.ACCESS_DENIED,
                f"A {caller.role.value} client cannot subscribe: subscriptions are for a trust's systems, "
                "to the status of the trust's own prescriptions",
            )
        ],
    )


def _record(
    db: Database,
    caller: Caller,
    *,
    action: Action,
    outcome: Outcome,
    status: int,
    request_id: str,
    clock: Clock,
    resource_id: str | None = None,
) -> None:
    access.record(
        db,
        caller=caller,
        action=action,
        outcome=outcome,
        resource_type=RESOURCE_TYPE,
        resource_id=resource_id,
        status=status,
        request_id=request_id,
        clock=clock,
    )


def create_subscription(
    db: Database,
    *,
    document: Any,
    caller: Caller,
    endpoints: EndpointPolicy,
    request_id: str,
    clock: Clock,
) -> Created:
    """Check and store a new subscription for the caller's trust, `active` at once."""
    now = clock()
    try:
        if caller.role not in SUBSCRIBER_ROLES:
            raise _forbidden_role(caller)
        request = check_subscription(document, now=now, endpoints=endpoints)
    except OperationOutcomeError as refusal:
        _record(
            db,
            caller,
            action=Action.CREATE,
            outcome=Outcome.REFUSED,
            status=refusal.status_code,
            request_id=request_id,
            clock=clock,
        )
        raise
    subscription_id = str(uuid.uuid4())
    values = {
        "id": subscription_id,
        "tenant_ods": caller.ods_code,
        "client_id": caller.client_id,
        "criteria": request.criteria,
        "endpoint": request.endpoint,
        "payload": request.payload,
        "headers": list(request.headers),
        "status": store.ACTIVE,
        "error": None,
        "failure_count": 0,
        "reason": request.reason,
        "end_at": request.end,
        "created_at": now,
        "updated_at": now,
    }
    audit = AuditRecord.by(
        caller,
        action=Action.CREATE,
        outcome=Outcome.SUCCESS,
        occurred_at=now,
        request_id=request_id,
        resource_type=RESOURCE_TYPE,
        resource_id=subscription_id,
        status=201,
    )
    with db.write_connection() as connection:
        store.insert_subscription(connection, values)
        append(connection, [audit])
    with db.read() as session:
        stored = store.get_subscription(session, subscription_id, tenant_ods=caller.ods_code)
    assert stored is not None
    return Created(subscription_resource(stored), f"/fhir/Subscription/{subscription_id}")


def read_subscription(
    db: Database, *, subscription_id: str, caller: Caller, request_id: str, clock: Clock
) -> dict[str, Any]:
    found = None
    if caller.role in SUBSCRIBER_ROLES:
        with db.read() as session:
            found = store.get_subscription(session, subscription_id, tenant_ods=caller.ods_code)
    _record(
        db,
        caller,
        action=Action.READ,
        outcome=Outcome.SUCCESS if found else Outcome.NOT_FOUND,
        status=200 if found else 404,
        request_id=request_id,
        clock=clock,
        resource_id=subscription_id,
    )
    if found is None:
        raise _not_found()
    return subscription_resource(found)


def search_subscriptions(
    db: Database, *, caller: Caller, base_url: str, request_id: str, clock: Clock
) -> dict[str, Any]:
    """A searchset Bundle of the caller's trust's subscriptions (every status, oldest first)."""
    found = []
    if caller.role in SUBSCRIBER_ROLES:
        with db.read() as session:
            found = list(store.list_subscriptions(session, tenant_ods=caller.ods_code))
    _record(
        db,
        caller,
        action=Action.SEARCH,
        outcome=Outcome.SUCCESS,
        status=200,
        request_id=request_id,
        clock=clock,
    )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": f"{base_url}/fhir/Subscription"}],
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/Subscription/{subscription.id}",
                "resource": subscription_resource(subscription),
                "search": {"mode": "match"},
            }
            for subscription in found
        ],
    }


def delete_subscription(
    db: Database, *, subscription_id: str, caller: Caller, request_id: str, clock: Clock
) -> dict[str, Any]:
    """Turn the subscription off (its queued notifications are dropped); the resource as it now is."""
    now = clock()
    switched = False
    if caller.role in SUBSCRIBER_ROLES:
        with db.write_connection() as connection:
            switched = store.switch_off(connection, subscription_id, tenant_ods=caller.ods_code, now=now)
            if switched:
                kill_pending_notifications(
                    connection, subscription_id, now=now, reason="the subscription was turned off"
                )
                append(
                    connection,
                    [
                        AuditRecord.by(
                            caller,
                            action=Action.DELETE,
                            outcome=Outcome.SUCCESS,
                            occurred_at=now,
                            request_id=request_id,
                            resource_type=RESOURCE_TYPE,
                            resource_id=subscription_id,
                            status=200,
                        )
                    ],
                )
    if not switched:
        _record(
            db,
            caller,
            action=Action.DELETE,
            outcome=Outcome.NOT_FOUND,
            status=404,
            request_id=request_id,
            clock=clock,
            resource_id=subscription_id,
        )
        raise _not_found()
    with db.read() as session:
        stored = store.get_subscription(session, subscription_id, tenant_ods=caller.ods_code)
    assert stored is not None
    return subscription_resource(stored)


def notify_status_change(connection: Connection, applied: Applied, now: datetime) -> None:
    """The status listener: every applied change of an item is offered to the subscriptions."""
    if applied.verdict is not Verdict.APPLIED:
        return
    view = applied.view
    enqueue_notifications(
        connection,
        tenant_ods=view.tenant_ods,
        provider_ods=view.provider_ods,
        prescription_id=view.prescription_id,
        task=applied.task,
        business_status=view.status,
        now=now,
    )
