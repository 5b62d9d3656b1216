"""Provider queries: the provider asks (a `query` status with its text), the trust answers with a
`Communication`, which puts the item back where the query found it. Both sides read the thread."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from auth.audit import Action, Outcome
from auth.identity import Caller, Role
from fhir_profiles.identifiers import ODS_SYSTEM
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain import access
from gateway.domain.context import Context
from gateway.domain.reads import item_not_found
from gateway.domain.search_parameters import SearchParameter
from gateway.domain.status import Status, trust_source
from gateway.domain.status_authority import change_status
from gateway.domain.tasks import fhir_instant
from gateway.store import items, query_threads
from gateway.store.db import Tx
from gateway.store.items import ItemKey, ItemView
from gateway.store.query_threads import ThreadMessage


def record_query_message(
    tx: Tx,
    view: ItemView,
    *,
    author_role: str,
    author_ods: str,
    text: str,
    sent_at: datetime,
    request_id: str,
) -> str:
    message_id = str(uuid.uuid4())
    query_threads.add_message(
        tx,
        ThreadMessage(
            message_id=message_id,
            prescription_id=view.prescription_id,
            item_id=view.item_id,
            author_role=author_role,
            author_ods=author_ods,
            text=text[:4000],
            sent_at=sent_at,
            request_id=request_id,
        ),
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


def _read_answer(communication: Any) -> tuple[str, str]:
    """The item a Communication answers about and the answer's text, or 400 naming what is missing."""
    if not isinstance(communication, dict) or communication.get("resourceType") != "Communication":
        raise OperationOutcomeError(
            400,
            [Issue(IssueType.STRUCTURE, ErrorCode.INVALID_RESOURCE_TYPE, "Expected a FHIR Communication")],
        )
    item_id, text = _item_of(communication), _text_of(communication)
    issues: list[Issue] = []
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
    if item_id is None or text is None:
        raise OperationOutcomeError(400, issues)
    return item_id, text


_ANSWERING_ROLES = frozenset({Role.TRUST, Role.CLINICIAN_APP, Role.CLINICIAN})


def answer_query(ctx: Context, *, caller: Caller, communication: Any, request_id: str) -> dict[str, Any]:
    """The trust's answer to a provider's query about one of its items: the item resumes."""
    if caller.role not in _ANSWERING_ROLES:
        raise OperationOutcomeError(
            403,
            [Issue(IssueType.FORBIDDEN, ErrorCode.ACCESS_DENIED, "The trust answers its provider's queries")],
        )
    item_id, text = _read_answer(communication)
    now = ctx.clock()
    with ctx.db.transaction() as tx:
        view = items.find(tx, ItemKey.by_id(item_id), caller=caller, for_change=True)
        if view is None:
            raise item_not_found()
        message_id = record_query_message(
            tx,
            view,
            author_role="trust",
            author_ods=caller.ods_code,
            text=text,
            sent_at=now,
            request_id=request_id,
        )
        if Status(view.status) is Status.QUERY:
            change_status(
                tx,
                view,
                Status(view.resume_status or Status.SENT),
                source=trust_source(caller.ods_code),
                occurred_at=now,
                detail={"query_answered": message_id},
                now=now,
                listener=ctx.listener,
                expression="Communication",
            )
    access.record(
        ctx.db,
        caller=caller,
        action=Action.CREATE,
        outcome=Outcome.SUCCESS,
        resource_type="Communication",
        resource_id=message_id,
        status=201,
        request_id=request_id,
        clock=ctx.clock,
    )
    return _communication(message_id, item_id, "trust", caller.ods_code, text, now)


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


COMMUNICATION_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "about",
        "reference",
        "The line item's Task whose query thread to read, as `Task/{id}`; required",
        "Task/a54219b8-f741-4c47-b662-e4f8dfa49ab6",
    ),
)


def query_thread(ctx: Context, *, caller: Caller, item_id: str, request_id: str) -> dict[str, Any]:
    """Every message about an item, oldest first, for the trust and the provider alike."""
    with ctx.db.snapshot() as tx:
        visible = items.find(tx, ItemKey.by_id(item_id), caller=caller) is not None
        thread = query_threads.thread_of_item(tx, item_id) if visible else []
    access.record_lookup(
        ctx.db,
        caller=caller,
        resource_type="Communication",
        resource_id=item_id,
        found=visible,
        request_id=request_id,
        clock=ctx.clock,
        action=Action.SEARCH,
    )
    if not visible:
        raise item_not_found()
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": _communication(
                    message.message_id,
                    item_id,
                    message.author_role,
                    message.author_ods,
                    message.text,
                    message.sent_at,
                ),
                "search": {"mode": "match"},
            }
            for message in thread
        ],
    }
