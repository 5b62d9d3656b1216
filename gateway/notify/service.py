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

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller, Role
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain import access
from gateway.domain.context import Context
from gateway.domain.search_parameters import SearchParameter
from gateway.domain.status import Verdict
from gateway.domain.status_authority import Applied
from gateway.kpi.watch import RunOutWarning
from gateway.logs import get_logger
from gateway.notify.criteria import RUN_OUT_RISK, CriteriaError, parse_criteria
from gateway.notify.endpoints import EndpointPolicy
from gateway.notify.subscription import check_subscription, subscription_resource
from gateway.store import audit, outbox
from gateway.store import subscriptions as store
from gateway.store.db import Tx

RESOURCE_TYPE = "Subscription"
# Who may subscribe: the systems of a trust. A provider learns of its orders through its adapter.
SUBSCRIBER_ROLES = frozenset({Role.TRUST, Role.CLINICIAN_APP})

log = get_logger("gateway.notify")


def enqueue_notifications(
    tx: Tx,
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
    matching: list[store.ActiveSubscription] = []
    for subscription in store.active_subscriptions(tx, tenant_ods=tenant_ods, now=now):
        try:
            wanted = parse_criteria(subscription.criteria).matches(
                owner_ods=provider_ods, business_status=business_status
            )
        except CriteriaError:
            # Checked when it was created; if a later release reads it differently, the status change
            # must still be recorded. The subscriber is told nothing rather than something wrong.
            log.warning("subscription_criteria_unusable", subscription_id=subscription.subscription_id)
            continue
        if wanted:
            matching.append(subscription)
    if not matching:
        return 0
    snapshot = orjson.dumps(task)
    outbox.enqueue(
        tx,
        [
            outbox.notification(
                prescription_id=prescription_id,
                provider_ods=provider_ods,
                subscription_id=subscription.subscription_id,
                payload=snapshot if subscription.payload else None,
                now=now,
            )
            for subscription in matching
        ],
    )
    return len(matching)


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
    ctx: Context,
    caller: Caller,
    *,
    action: Action,
    outcome: Outcome,
    status: int,
    request_id: str,
    resource_id: str | None = None,
) -> None:
    access.record(
        ctx.db,
        caller=caller,
        action=action,
        outcome=outcome,
        resource_type=RESOURCE_TYPE,
        resource_id=resource_id,
        status=status,
        request_id=request_id,
        clock=ctx.clock,
    )


def record_refused_create(ctx: Context, *, caller: Caller, request_id: str, status: int) -> None:
    """Audit a subscription refused before it could be read (the body was not FHIR JSON, say)."""
    _record(ctx, caller, action=Action.CREATE, outcome=Outcome.REFUSED, status=status, request_id=request_id)


def _too_many(cap: int) -> OperationOutcomeError:
    return OperationOutcomeError(
        422,
        [
            Issue(
                IssueType.BUSINESS_RULE,
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"This trust already holds {cap} subscriptions (active or in error), the most allowed "
                "(setting HOMECARE_MAX_SUBSCRIPTIONS_PER_TENANT): delete one it no longer needs first",
            )
        ],
    )


def create_subscription(
    ctx: Context,
    *,
    document: Any,
    caller: Caller,
    endpoints: EndpointPolicy,
    request_id: str,
    max_per_tenant: int = 100,
) -> Created:
    """Check and store a new subscription for the caller's trust, `active` at once; at most
    `max_per_tenant` not turned off per trust."""
    now = ctx.clock()
    try:
        if caller.role not in SUBSCRIBER_ROLES:
            raise _forbidden_role(caller)
        request = check_subscription(document, now=now, endpoints=endpoints)
    except OperationOutcomeError as refusal:
        _record(
            ctx,
            caller,
            action=Action.CREATE,
            outcome=Outcome.REFUSED,
            status=refusal.status_code,
            request_id=request_id,
        )
        raise
    subscription = store.StoredSubscription(
        id=str(uuid.uuid4()),
        tenant_ods=caller.ods_code,
        client_id=caller.client_id,
        criteria=request.criteria,
        endpoint=request.endpoint,
        payload=request.payload,
        headers=list(request.headers),
        status=store.ACTIVE,
        error=None,
        failure_count=0,
        reason=request.reason,
        end_at=request.end,
        created_at=now,
        updated_at=now,
    )
    entry = AuditRecord.by(
        caller,
        action=Action.CREATE,
        outcome=Outcome.SUCCESS,
        occurred_at=now,
        request_id=request_id,
        resource_type=RESOURCE_TYPE,
        resource_id=subscription.id,
        status=201,
    )
    with ctx.db.transaction() as tx:
        full = store.count_held(tx, tenant_ods=caller.ods_code) >= max_per_tenant
        if not full:
            store.insert_subscription(tx, subscription)
            audit.record(tx, [entry])
    if full:
        too_many = _too_many(max_per_tenant)
        _record(
            ctx,
            caller,
            action=Action.CREATE,
            outcome=Outcome.REFUSED,
            status=too_many.status_code,
            request_id=request_id,
        )
        raise too_many
    return Created(subscription_resource(subscription), f"/fhir/Subscription/{subscription.id}")


def read_subscription(
    ctx: Context, *, subscription_id: str, caller: Caller, request_id: str
) -> dict[str, Any]:
    found = None
    if caller.role in SUBSCRIBER_ROLES:
        with ctx.db.snapshot() as tx:
            found = store.get_subscription(tx, subscription_id, tenant_ods=caller.ods_code)
    _record(
        ctx,
        caller,
        action=Action.READ,
        outcome=Outcome.SUCCESS if found else Outcome.NOT_FOUND,
        status=200 if found else 404,
        request_id=request_id,
        resource_id=subscription_id,
    )
    if found is None:
        raise _not_found()
    return subscription_resource(found)


# A trust's subscriptions are few: the search lists them all and takes no parameters.
SUBSCRIPTION_SEARCH: tuple[SearchParameter, ...] = ()


def search_subscriptions(ctx: Context, *, caller: Caller, base_url: str, request_id: str) -> dict[str, Any]:
    """A searchset Bundle of the caller's trust's subscriptions (every status, oldest first)."""
    found: list[store.StoredSubscription] = []
    if caller.role in SUBSCRIBER_ROLES:
        with ctx.db.snapshot() as tx:
            found = store.list_subscriptions(tx, tenant_ods=caller.ods_code)
    _record(ctx, caller, action=Action.SEARCH, outcome=Outcome.SUCCESS, status=200, request_id=request_id)
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
    ctx: Context, *, subscription_id: str, caller: Caller, request_id: str
) -> dict[str, Any]:
    """Turn the subscription off (its queued notifications are dropped); the resource as it now is."""
    now = ctx.clock()
    stored = None
    if caller.role in SUBSCRIBER_ROLES:
        with ctx.db.transaction() as tx:
            if store.switch_off(tx, subscription_id, tenant_ods=caller.ods_code, now=now):
                outbox.kill_pending_notifications(
                    tx, subscription_id, now=now, reason="the subscription was turned off"
                )
                audit.record(
                    tx,
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
                stored = store.get_subscription(tx, subscription_id, tenant_ods=caller.ods_code)
    if stored is None:
        _record(
            ctx,
            caller,
            action=Action.DELETE,
            outcome=Outcome.NOT_FOUND,
            status=404,
            request_id=request_id,
            resource_id=subscription_id,
        )
        raise _not_found()
    return subscription_resource(stored)


def notify_status_change(tx: Tx, applied: Applied, now: datetime) -> None:
    """The status listener: every applied change of an item is offered to the subscriptions."""
    if applied.verdict is not Verdict.APPLIED:
        return
    view = applied.view
    enqueue_notifications(
        tx,
        tenant_ods=view.tenant_ods,
        provider_ods=view.provider_ods,
        prescription_id=view.prescription_id,
        task=applied.task,
        business_status=view.status,
        now=now,
    )


def notify_run_out(tx: Tx, warning: RunOutWarning, now: datetime) -> None:
    """The run-out listener: a warning is offered to the subscriptions as a change with the
    pseudo-status `run-out-risk` (see gateway.notify.criteria), carrying the Task as it is (its own
    status unchanged) with the warning's extension."""
    enqueue_notifications(
        tx,
        tenant_ods=warning.tenant_ods,
        provider_ods=warning.provider_ods,
        prescription_id=warning.prescription_id,
        task=warning.task,
        business_status=RUN_OUT_RISK,
        now=now,
    )
