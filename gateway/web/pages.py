"""The clinician pages: the worklist, a prescription, the provider overview, and live updates.
Thin: parse, check the form's CSRF token, call a domain service as the signed-in person, render."""

from __future__ import annotations

import re
from datetime import date
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from fhir_profiles.outcome import OperationOutcomeError
from gateway.api.deps import Services, ServicesDep
from gateway.domain import prescription_record, worklist
from gateway.domain.status import Status
from gateway.web import actions
from gateway.web.errors import PageError, for_person, page_error
from gateway.web.rendering import PAGE_HEADERS, render
from gateway.web.session import (
    Person,
    PollingPerson,
    SignedIn,
    action_settings,
    check_csrf,
    read_form,
)

router = APIRouter(include_in_schema=False)
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DONE = {"answered": "Your answer was sent to the provider."}


def _checked_id(value: str) -> str:
    if not _ID.match(value):
        raise PageError(404, "There is nothing here, or it belongs to another trust.")
    return value


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _filters(request: Request, known_providers: set[str]) -> worklist.WorklistQuery:
    """Filters from the query string: only codes and dates, never patient data. Unknown values are
    ignored rather than refused, so an old bookmark still opens."""
    params = request.query_params
    provider = params.get("provider") or None
    status = params.get("status") or None
    page = params.get("page", "1")
    return worklist.WorklistQuery(
        provider_ods=provider if provider in known_providers else None,
        status=status if status in {s.value for s in Status} else None,
        active_from=_date(params.get("from")),
        active_to=_date(params.get("to")),
        page=int(page) if page.isdigit() and 0 < int(page) < 1_000_000 else 1,
    )


def _query_string(query: worklist.WorklistQuery, page: int) -> str:
    values = {
        "provider": query.provider_ods or "",
        "status": query.status or "",
        "from": query.active_from.isoformat() if query.active_from else "",
        "to": query.active_to.isoformat() if query.active_to else "",
        "page": str(page),
    }
    return urlencode(
        {key: value for key, value in values.items() if value and (key != "page" or value != "1")}
    )


async def _worklist_page(
    request: Request, services: Services, person: SignedIn, query: worklist.WorklistQuery
) -> Response:
    providers = await run_in_threadpool(worklist.providers, services.db)
    # The stamp is read before the rows: a change in between shows at the first poll, never lost.
    stamp = await _live_stamp(services, person)
    page = await for_person(
        services,
        request,
        person,
        worklist.worklist,
        query=query,
        settings=action_settings(services.settings),
        page_size=services.settings.web_page_size,
    )
    context: dict[str, Any] = {
        "person": person.person,
        "csrf_token": person.session.csrf_token,
        "page": page,
        "query": query,
        "providers": providers,
        "statuses": [(status.value, words) for status, words in worklist.STATUS_WORDS.items()],
        "previous_link": f"/web/?{_query_string(query, page.page - 1)}" if page.page > 1 else None,
        "next_link": f"/web/?{_query_string(query, page.page + 1)}" if page.page < page.pages else None,
        "live_url": "/web/live",
        "live_stamp": stamp,
        "poll_seconds": services.settings.web_live_poll_seconds,
        "searching": query.search is not None,
    }
    return render(request, "worklist.html", context)


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/web/", status_code=303)


@router.get("/web")
@router.get("/web/")
async def worklist_page(request: Request, person: Person, services: ServicesDep) -> Response:
    known = {provider.ods_code for provider in await run_in_threadpool(worklist.providers, services.db)}
    return await _worklist_page(request, services, person, _filters(request, known))


@router.post("/web/search")
async def search(request: Request, person: Person, services: ServicesDep) -> Response:
    """Search by NHS number or prescription ID: the term comes in the body, never in the URL."""
    form = await read_form(request)
    check_csrf(person.session, form)
    term = form.get("q", "").strip()[:64]
    if not term:
        return RedirectResponse("/web/", status_code=303)
    return await _worklist_page(request, services, person, worklist.WorklistQuery(search=term))


async def _record(
    request: Request, services: Services, person: SignedIn, prescription_id: str
) -> prescription_record.PrescriptionRecord:
    return await for_person(
        services,
        request,
        person,
        prescription_record.prescription_record,
        prescription_id=_checked_id(prescription_id),
        settings=action_settings(services.settings),
    )


@router.get("/web/prescriptions/{prescription_id}")
async def prescription_page(
    prescription_id: str, request: Request, person: Person, services: ServicesDep
) -> Response:
    stamp = await _live_stamp(services, person, _checked_id(prescription_id))
    record = await _record(request, services, person, prescription_id)
    context = {
        "person": person.person,
        "csrf_token": person.session.csrf_token,
        "record": record,
        "reasons": actions.CANCEL_REASONS,
        "done": _DONE.get(request.query_params.get("done", "")),
        "live_url": f"/web/live?prescription={record.prescription_id}",
        "live_stamp": stamp,
        "poll_seconds": services.settings.web_live_poll_seconds,
    }
    return render(request, "prescription.html", context)


@router.post("/web/prescriptions/{prescription_id}/answer")
async def answer_query(
    prescription_id: str, request: Request, person: Person, services: ServicesDep
) -> Response:
    form = await read_form(request)
    check_csrf(person.session, form)
    record = await _record(request, services, person, prescription_id)
    item_id, text = form.get("item_id", ""), form.get("answer", "").strip()
    if item_id not in {thread.item_id for thread in record.threads if thread.awaiting_answer}:
        raise PageError(409, "That query has already been answered or withdrawn.")
    if not text:
        raise PageError(400, "Write your answer before sending it.")
    try:
        await actions.answer_query(
            services,
            caller=person.caller,
            item_id=item_id,
            text=text[:4000],
            request_id=str(request.scope["state"]["request_id"]),
        )
    except OperationOutcomeError as refusal:
        raise page_error(refusal) from None
    return RedirectResponse(f"/web/prescriptions/{record.prescription_id}?done=answered", status_code=303)


def _cancel_choice(record: prescription_record.PrescriptionRecord, form: dict[str, str]) -> str:
    reason = form.get("reason", "")
    if reason not in actions.CANCEL_REASONS:
        raise PageError(400, "Choose why the prescription is cancelled.")
    if not record.cancellable_items:
        raise PageError(409, "Nothing on this prescription can be cancelled any more: it has been dispensed.")
    return reason


@router.post("/web/prescriptions/{prescription_id}/cancel")
async def confirm_cancel(
    prescription_id: str, request: Request, person: Person, services: ServicesDep
) -> Response:
    """Step one: say exactly what will happen, and ask to confirm."""
    form = await read_form(request)
    check_csrf(person.session, form)
    record = await _record(request, services, person, prescription_id)
    reason = _cancel_choice(record, form)
    context = {
        "person": person.person,
        "csrf_token": person.session.csrf_token,
        "record": record,
        "reason": reason,
        "reason_words": actions.CANCEL_REASONS[reason],
    }
    return render(request, "cancel_confirm.html", context)


@router.post("/web/prescriptions/{prescription_id}/cancel/confirm")
async def cancel(prescription_id: str, request: Request, person: Person, services: ServicesDep) -> Response:
    """Step two: the cancellation goes through the same flow as the trust system's message."""
    form = await read_form(request)
    check_csrf(person.session, form)
    record = await _record(request, services, person, prescription_id)
    reason = _cancel_choice(record, form)
    outcome = await actions.cancel_prescription(
        services,
        caller=person.caller,
        prescription_id=record.prescription_id,
        item_identifiers={item.item_identifier for item in record.cancellable_items},
        reason=reason,
        request_id=str(request.scope["state"]["request_id"]),
    )
    context = {
        "person": person.person,
        "csrf_token": person.session.csrf_token,
        "record": record,
        "outcome": outcome,
    }
    return render(
        request, "cancel_outcome.html", context, status_code=200 if outcome.status_code < 400 else 409
    )


@router.get("/web/providers")
async def providers_page(request: Request, person: Person, services: ServicesDep) -> Response:
    summaries = await for_person(services, request, person, worklist.provider_overview)
    context = {"person": person.person, "csrf_token": person.session.csrf_token, "summaries": summaries}
    return render(request, "providers.html", context)


@router.get("/web/live")
async def live(request: Request, person: PollingPerson, services: ServicesDep) -> Response:
    """A stamp that changes when what the page shows changes; the page polls it."""
    prescription = request.query_params.get("prescription")
    if prescription is not None:
        _checked_id(prescription)
    stamp = await _live_stamp(services, person, prescription)
    return JSONResponse({"stamp": stamp}, headers=PAGE_HEADERS)


async def _live_stamp(services: Services, person: SignedIn, prescription_id: str | None = None) -> str:
    return await run_in_threadpool(
        worklist.live_stamp, services.db, caller=person.caller, prescription_id=prescription_id
    )


# Registered after the static files: any other address under /web answers with a page, not FHIR.
fallback = APIRouter(include_in_schema=False)


@fallback.api_route("/web/{rest:path}", methods=["GET", "POST"])
async def not_found(request: Request) -> Response:
    return render(
        request,
        "error.html",
        {"heading": "Page not found", "message": "There is no page at this address."},
        status_code=404,
    )
