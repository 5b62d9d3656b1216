"""Reading Tasks: one Task, its timeline (`_history`) and searches with keyset paging. Every read
is audited; tenancy is in every query, so another organisation's item answers as a missing one."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from auth.audit import Action
from auth.identity import Caller
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain import access, pull
from gateway.domain.context import Context
from gateway.domain.reads import item_not_found
from gateway.domain.search_parameters import SearchParameter
from gateway.domain.status import Status, Verdict, business_status, task_status
from gateway.domain.tasks import VERDICT_URL, fhir_instant, render_task, with_prescription_message
from gateway.store import events, items
from gateway.store.db import Tx
from gateway.store.events import TimelineEvent
from gateway.store.items import ItemKey, ItemView, Page, TaskFilter

DEFAULT_COUNT = 50
MAX_COUNT = 200


def read_task(ctx: Context, *, caller: Caller, item_id: str, request_id: str) -> dict[str, Any]:
    def find(tx: Tx) -> tuple[ItemView, dict[str, Any] | None] | None:
        view = items.find(tx, ItemKey.by_id(item_id), caller=caller)
        return (
            None if view is None else (view, events.latest_detail(tx, item_id, verdict=Verdict.APPLIED.value))
        )

    view, detail = access.audited_lookup(
        ctx.db,
        find,
        caller=caller,
        resource_type="Task",
        resource_id=item_id,
        request_id=request_id,
        clock=ctx.clock,
        missing=item_not_found,
    )
    return render_task(view, detail=detail)


def task_history(
    ctx: Context, *, caller: Caller, item_id: str, base_url: str, request_id: str
) -> dict[str, Any]:
    """Every event of the item, oldest first: the gateway's, the provider's and the trust's."""
    with ctx.db.snapshot() as tx:
        view = items.find(tx, ItemKey.by_id(item_id), caller=caller)
        timeline = events.timeline(tx, prescription_id=view.prescription_id, item_id=item_id) if view else []
    _audit_lookup(ctx, caller, item_id, found=view is not None, request_id=request_id, reason="history")
    if view is None:
        raise item_not_found()
    entries = [
        {
            "fullUrl": f"{base_url}/fhir/Task/{item_id}/_history/{version}",
            "resource": _snapshot(view, event, version),
            "request": {"method": "PUT", "url": f"Task/{item_id}"},
            "response": {"status": "200", "lastModified": fhir_instant(event.recorded_at)},
        }
        for version, event in enumerate(timeline, start=1)
    ]
    return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}


def _snapshot(view: ItemView, event: TimelineEvent, version: int) -> dict[str, Any]:
    """The Task as one event left it."""
    snapshot = render_task(view, detail=event.detail)
    status = Status(event.status)
    snapshot["meta"] = {"versionId": str(version), "lastUpdated": fhir_instant(event.recorded_at)}
    snapshot["status"] = task_status(status)
    snapshot["businessStatus"] = business_status(status)
    snapshot["lastModified"] = fhir_instant(event.occurred_at)
    snapshot["extension"].append(
        {
            "url": VERDICT_URL,
            "extension": [
                {"url": "verdict", "valueCode": event.verdict or Verdict.APPLIED.value},
                {"url": "source", "valueString": event.source},
            ],
        }
    )
    return snapshot


def _audit_lookup(
    ctx: Context,
    caller: Caller,
    item_id: str | None,
    *,
    found: bool,
    request_id: str,
    reason: str | None = None,
    action: Action = Action.READ,
) -> None:
    access.record_lookup(
        ctx.db,
        caller=caller,
        resource_type="Task",
        resource_id=item_id,
        found=found,
        request_id=request_id,
        clock=ctx.clock,
        action=action,
        reason=reason,
    )


# --- Search -------------------------------------------------------------------------------------

_PREFIXES = frozenset({"gt", "ge", "lt", "le", "eq"})


class _SearchRequest:
    """The parameters of one search, read one by one; every problem is kept to be reported together."""

    def __init__(self, *, patient_allowed: bool) -> None:
        self.patient_allowed = patient_allowed
        self.wanted: dict[str, Any] = {}
        self.updated: list[tuple[str, datetime]] = []
        self.count = DEFAULT_COUNT
        self.newest_first = True
        self.after: tuple[datetime, str] | None = None
        self.issues: list[Issue] = []

    def bad(self, parameter: str, diagnostics: str) -> None:
        self.issues.append(Issue(IssueType.VALUE, ErrorCode.INVALID_VALUE, diagnostics, parameter))

    def owner(self, value: str) -> None:
        self.wanted["provider_ods"] = _token_value(value)

    def requester(self, value: str) -> None:
        self.wanted["tenant_ods"] = _token_value(value)

    def business_status(self, value: str) -> None:
        wanted = tuple(_token_value(code) for code in value.split(","))
        unknown = [code for code in wanted if code not in Status.__members__.values()]
        if unknown:
            self.bad("business-status", f"Unknown business status '{unknown[0][:32]}'")
        self.wanted["statuses"] = wanted

    def focus(self, value: str) -> None:
        self.wanted["item_identifier"] = _token_value(value)

    def based_on(self, value: str) -> None:
        self.wanted["short_form_id"] = _token_value(value)

    def patient(self, value: str) -> None:
        if not self.patient_allowed:
            self.bad(
                "patient:identifier",
                "Search by NHS number with POST /fhir/Task/_search (form body): patient data never goes in a URL",
            )
        self.wanted["nhs_number"] = _token_value(value)

    def last_updated(self, value: str) -> None:
        prefix, moment_text = (value[:2], value[2:]) if value[:2] in _PREFIXES else ("eq", value)
        moment = _instant(moment_text)
        if moment is None:
            self.bad(
                "_lastUpdated", "_lastUpdated is a prefix (gt, ge, lt, le, eq) and a date-time with zone"
            )
        else:
            self.updated.append((prefix, moment))

    def count_of(self, value: str) -> None:
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_COUNT:
            self.bad("_count", f"_count is a whole number from 1 to {MAX_COUNT}")
        else:
            self.count = int(value)

    def sort(self, value: str) -> None:
        if value not in ("_lastUpdated", "-_lastUpdated"):
            self.bad("_sort", "_sort is _lastUpdated or -_lastUpdated")
        self.newest_first = value.startswith("-")

    def page_token(self, value: str) -> None:
        self.after = _read_cursor(value)
        if self.after is None:
            self.bad("_page_token", "The page token is not one this gateway gave")


TASK_SEARCH: tuple[SearchParameter, ...] = (
    SearchParameter(
        "owner",
        "token",
        "The provider's ODS code (`VNCEL`, or `https://fhir.nhs.uk/Id/ods-organization-code|VNCEL`)",
        "VNCEL",
        _SearchRequest.owner,
    ),
    SearchParameter(
        "requester",
        "token",
        "The trust's ODS code (`RBA`, or with the ODS system as for owner)",
        "RBA",
        _SearchRequest.requester,
    ),
    SearchParameter(
        "business-status",
        "token",
        "The gateway's status code (CodeSystem homecare-status), comma for any of: `queued,sent`",
        "delivery-failed",
        _SearchRequest.business_status,
    ),
    SearchParameter(
        "focus:identifier",
        "token",
        "The line item identifier (`https://fhir.nhs.uk/Id/prescription-order-item-number|<id>`)",
        "a54219b8-f741-4c47-b662-e4f8dfa49ab6",
        _SearchRequest.focus,
    ),
    SearchParameter(
        "based-on:identifier",
        "token",
        "The short-form prescription ID (`https://fhir.nhs.uk/Id/prescription-order-number|<id>`)",
        "A99968-A99968-00000T",
        _SearchRequest.based_on,
    ),
    SearchParameter(
        "patient:identifier",
        "token",
        "The patient's NHS number (`https://fhir.nhs.uk/Id/nhs-number|<number>`); only in the form body "
        "of POST /fhir/Task/_search, never in a URL",
        "9449304106",
        _SearchRequest.patient,
        post_only=True,
    ),
    SearchParameter(
        "_lastUpdated",
        "date",
        "When the Task last changed: a prefix (gt, ge, lt, le, eq) and a date-time with zone; repeat for a range",
        "gt2026-11-23T00:00:00Z",
        _SearchRequest.last_updated,
    ),
    SearchParameter(
        "_count",
        "number",
        f"Tasks per page, 1 to {MAX_COUNT} (default {DEFAULT_COUNT})",
        "20",
        _SearchRequest.count_of,
    ),
    SearchParameter(
        "_sort",
        "string",
        "`-_lastUpdated` (newest change first, the default) or `_lastUpdated`",
        "-_lastUpdated",
        _SearchRequest.sort,
    ),
    SearchParameter(
        "_page_token",
        "string",
        "The opaque keyset token of a `next` link (search again with it for the next page)",
        "",
        _SearchRequest.page_token,
        paging=True,
    ),
)
_PARAMETERS: dict[str, Callable[[_SearchRequest, str], None]] = {
    p.name: p.read for p in TASK_SEARCH if p.read is not None
}
SEARCH_PARAMETERS = frozenset(_PARAMETERS)


def _read_search(parameters: list[tuple[str, str]], *, patient_allowed: bool) -> _SearchRequest:
    request = _SearchRequest(patient_allowed=patient_allowed)
    for name, value in parameters:
        read = _PARAMETERS.get(name)
        if read is None:
            request.issues.append(
                Issue(
                    IssueType.NOT_SUPPORTED,
                    ErrorCode.INVALID_VALUE,
                    f"Search parameter '{name[:64]}' is not supported; use "
                    + ", ".join(sorted(SEARCH_PARAMETERS)),
                    name[:64],
                )
            )
        else:
            read(request, value)
    if request.issues:
        raise OperationOutcomeError(400, request.issues)
    return request


def search_tasks(
    ctx: Context,
    *,
    caller: Caller,
    parameters: list[tuple[str, str]],
    patient_allowed: bool,
    self_url: str,
    next_url: str,
    request_id: str,
) -> dict[str, Any]:
    """A searchset of the caller's Tasks, newest change first, with a keyset `next` link. A `pull`
    provider's search for its queued orders leases what it returns instead (`gateway.domain.pull`)."""
    search = _read_search(parameters, patient_allowed=patient_allowed)
    if not search.updated and search.after is None and pull.takes_leases(ctx, caller, search.wanted):
        return _offer_queued_orders(
            ctx, caller=caller, count=search.count, self_url=self_url, request_id=request_id
        )
    wanted = TaskFilter(**search.wanted, updated=tuple(search.updated))
    page = Page(count=search.count, newest_first=search.newest_first, after=search.after)
    with ctx.db.snapshot() as tx:
        found = items.search(tx, caller=caller, wanted=wanted, page=page)
    _audit_lookup(ctx, caller, None, found=True, request_id=request_id, action=Action.SEARCH)
    views = found[: search.count]
    links = [{"relation": "self", "url": self_url}]
    if len(found) > search.count:
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
            {"fullUrl": f"Task/{view.item_id}", "resource": render_task(view), "search": {"mode": "match"}}
            for view in views
        ],
    }


def _offer_queued_orders(
    ctx: Context, *, caller: Caller, count: int, self_url: str, request_id: str
) -> dict[str, Any]:
    """Queued orders for a provider that pulls them, leased to this poller; no `next` link: the next
    search offers the next orders."""
    offered = pull.offer_queued_orders(ctx, caller=caller, count=count)
    _audit_lookup(ctx, caller, None, found=True, request_id=request_id, action=Action.SEARCH, reason="pull")
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {
                "fullUrl": f"Task/{item.view.item_id}",
                "resource": with_prescription_message(render_task(item.view), item.message_id),
                "search": {"mode": "match"},
            }
            for item in offered
        ],
    }


def _token_value(value: str) -> str:
    """`system|value` or `value`: the value (systems are implied by the parameter)."""
    return value.rpartition("|")[2]


def _instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


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
