"""Provider queries: the provider asks (a `query` status with its text), the trust answers with a
`Communication`, which puts the item back where the query found it. Both sides read the thread."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from auth.audit import Action, Outcome
from auth.identity import Caller, Role
from auth.tenancy import visible_filter
from fhir_profiles.identifiers import ODS_SYSTEM
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.clock import Clock
from gateway.domain import access
from gateway.domain.cancellation import StatusListener
from gateway.domain.status import Status
from gateway.domain.status_updates import change_item, not_found, trust_source
from gateway.domain.tasks import ItemView, fhir_instant
from gateway.store import status as store
from gateway.store.db import Database
from gateway.store.models import QueryMessage

_query = QueryMessage.__table__  # type: ignore[attr-defined]


def record_query_message(
    connection: Connection,
    view: ItemView,
    *,
    author_role: str,
    author_ods: str,
    text: str,
    sent_at: datetime,
    request_id: str,
) -> str:
    message_id = str(uuid.uuid4())
    connection.execute(
        insert(_query),
        [
            {
                "id": message_id,
                "prescription_id": view.prescription_id,
                "item_id": view.item_id,
                "author_role": author_role,
                "author_ods": author_ods,
                "text": text[:4000],
                "sent_at": sent_at,
                "request_id": request_id,
            }
        ],
    )
    return message_id


def _item_of(communication: dict[str, Any]) -> str | None:
    for key in ("about", "basedOn"):
        for reference in communication.get(key) or []:
            target = reference.get("reference") if isinstance(reference, dict) else None
            if isinstance(target, str) and target.startswith("Task/") and target.count("/") == 1:
                return target.removeprefix("Task/")
    return None


def _text_of(communication: dict[str, Any]) -> str | None:
    for payload in communication.get("payload") or []:
        text = payload.get("contentString") if isinstance(payload, dict) else None
        if isinstance(text, str) and text.strip():
            return text
    return None


def answer_query(
    db: Database,
    *,
    caller: Caller,
    communication: Any,
    request_id: str,
    clock: Clock,
    notify: StatusListener | None,
) -> dict[str, Any]:
    """The trust's answer to a provider's query about one of its items."""
    issues: list[Issue] = []
    if not isinstance(communication, dict) or communication.get("resourceType") != "Communication":
        raise OperationOutcomeError(
            400,
            [Issue(IssueType.STRUCTURE, ErrorCode.INVALID_RESOURCE_TYPE, "Expected a FHIR Communication")],
        )
    item_id, text = _item_of(communication), _text_of(communication)
    if item_id is None:
        issues.append(
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                "about must reference the item's Task/{id}",
                "Communication.about",
            )
        )
    if text is None:
        issues.append(
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                "payload.contentString (the answer) is required",
                "Communication.payload",
            )
        )
    if caller.role not in (Role.TRUST, Role.CLINICIAN_APP, Role.CLINICIAN):
        raise OperationOutcomeError(
            403,
            [Issue(IssueType.FORBIDDEN, ErrorCode.ACCESS_DENIED, "The trust answers its provider's queries")],
        )
    if issues:
        raise OperationOutcomeError(400, issues)
    assert item_id is not None and text is not None
    now = clock()
    with db.write_connection() as connection:
        located = store.lock_item(
            connection,
            store.item_by_id(item_id) & _visible(caller),
            for_update=not db.is_sqlite,
        )
        if located is None:
            raise not_found()
        view, resume = located
        message_id = record_query_message(
            connection,
            view,
            author_role="trust",
            author_ods=caller.ods_code,
            text=text,
            sent_at=now,
            request_id=request_id,
        )
        if Status(view.status) is Status.QUERY:
            change_item(
                connection,
                view,
                status=Status(resume or Status.SENT),
                occurred_at=now,
                source=trust_source(caller.ods_code),
                detail={"query_answered": message_id},
                now=now,
                expression="Communication",
                notify=notify,
            )
    access.record(
        db,
        caller=caller,
        action=Action.CREATE,
        outcome=Outcome.SUCCESS,
        resource_type="Communication",
        resource_id=message_id,
        status=201,
        request_id=request_id,
        clock=clock,
    )
    return _communication(message_id, item_id, "trust", caller.ods_code, text, now)


def _visible(caller: Caller) -> Any:
    return visible_filter(
        caller, tenant_column=store.item_table.c.tenant_ods, provider_column=store.item_table.c.provider_ods
    )


def _communication(
    message_id: str, item_id: str, role: str, ods: str, text: str, sent: datetime
) -> dict[str, Any]:
    return {
        "resourceType": "Communication",
        "id": message_id,
        "status": "completed",
        "about": [{"reference": f"Task/{item_id}"}],
        "sent": fhir_instant(sent),
        "sender": {"identifier": {"system": ODS_SYSTEM, "value": ods}, "display": role},
        "payload": [{"contentString": text}],
    }


def query_thread(
    db: Database, *, caller: Caller, item_id: str, request_id: str, clock: Clock
) -> dict[str, Any]:
    """Every message about an item, oldest first, for the trust and the provider alike."""
    with db.read() as session:
        connection = session.connection()
        visible = connection.execute(
            select(store.item_table.c.id).where(store.item_by_id(item_id), _visible(caller))
        ).first()
        rows = (
            connection.execute(
                select(
                    _query.c.id, _query.c.author_role, _query.c.author_ods, _query.c.text, _query.c.sent_at
                )
                .where(_query.c.item_id == item_id)
                .order_by(_query.c.sent_at, _query.c.id)
            ).all()
            if visible
            else []
        )
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Communication",
        resource_id=item_id,
        found=bool(visible),
        request_id=request_id,
        clock=clock,
        action=Action.SEARCH,
    )
    if not visible:
        raise not_found()
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": _communication(row[0], item_id, row[1], row[2], row[3], row[4]),
                "search": {"mode": "match"},
            }
            for row in rows
        ],
    }
