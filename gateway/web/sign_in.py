"""Signing in and out: local accounts (username and password) and OpenID Connect."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from gateway.api.deps import Services, ServicesDep
from gateway.domain import people
from gateway.logs import get_logger
from gateway.web.oidc import OidcError, OidcSignIn
from gateway.web.rendering import PAGE_HEADERS, render
from gateway.web.session import (
    FormRefused,
    browser_session,
    check_csrf,
    clear_session_cookie,
    read_form,
    session_policy,
    set_session_cookie,
)

router = APIRouter(include_in_schema=False)
log = get_logger("gateway.web.sign_in")
_NOTICES = {
    "signed-out": "You have signed out.",
    "expired": "Your session has ended. Sign in again to carry on.",
}


def _oidc(request: Request) -> OidcSignIn | None:
    found: OidcSignIn | None = getattr(request.app.state, "oidc", None)
    return found


def _request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


async def _anonymous_session(
    services: Services, request: Request
) -> tuple[people.BrowserSession, str | None]:
    """The browser's session, or a new one (its token to set as the cookie)."""
    session = await browser_session(request, services)
    if session is not None:
        return session, None
    started = await run_in_threadpool(
        people.start_session,
        services.db,
        person=None,
        policy=session_policy(services.settings),
        clock=services.clock,
    )
    return started.session, started.token


def _sign_in_page(
    request: Request,
    services: Services,
    session: people.BrowserSession,
    *,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    oidc = _oidc(request)
    return render(
        request,
        "sign_in.html",
        {
            "csrf_token": session.csrf_token,
            "error": error,
            "notice": notice,
            "oidc_label": services.settings.oidc_button_label if oidc else None,
        },
        status_code=status_code,
    )


@router.get("/web/sign-in")
async def sign_in_page(
    request: Request, services: ServicesDep, ended: Annotated[str | None, Query()] = None
) -> Response:
    session, new_token = await _anonymous_session(services, request)
    if session.person is not None:
        return RedirectResponse("/web/", status_code=303)
    response = _sign_in_page(request, services, session, notice=_NOTICES.get(ended or ""))
    if new_token:
        set_session_cookie(response, new_token, services.settings)
    return response


async def _signed_in_response(
    services: Services, session: people.BrowserSession, person: people.Person
) -> Response:
    """A new session for the person (never the anonymous one: no fixation), then the worklist."""
    policy = session_policy(services.settings)
    await run_in_threadpool(people.end_session, services.db, session, clock=services.clock, request_id="-")
    started = await run_in_threadpool(
        people.start_session, services.db, person=person, policy=policy, clock=services.clock
    )
    response = RedirectResponse("/web/", status_code=303, headers={"Cache-Control": "no-store"})
    set_session_cookie(response, started.token, services.settings)
    return response


@router.post("/web/sign-in")
async def sign_in(request: Request, services: ServicesDep) -> Response:
    session = await browser_session(request, services)
    if session is None:
        raise FormRefused("The sign-in form had expired. Go back, reload the page and sign in again.")
    form = await read_form(request)
    check_csrf(session, form)
    person = await run_in_threadpool(
        people.sign_in_with_password,
        services.db,
        username=form.get("username", ""),
        password=form.get("password", ""),
        policy=session_policy(services.settings),
        clock=services.clock,
        request_id=_request_id(request),
    )
    if person is None:
        return _sign_in_page(
            request,
            services,
            session,
            error="The username or password is wrong, or the account is locked after repeated failures "
            "or disabled. Try again, or ask your administrator.",
            status_code=401,
        )
    return await _signed_in_response(services, session, person)


@router.post("/web/sign-out")
async def sign_out(request: Request, services: ServicesDep) -> Response:
    session = await browser_session(request, services, touch=False)
    response = RedirectResponse("/web/sign-in?ended=signed-out", status_code=303, headers=PAGE_HEADERS)
    if session is not None:
        check_csrf(session, await read_form(request))
        await run_in_threadpool(
            people.end_session, services.db, session, clock=services.clock, request_id=_request_id(request)
        )
    clear_session_cookie(response, services.settings)
    return response


@router.get("/web/oidc/start")
async def oidc_start(request: Request, services: ServicesDep) -> Response:
    oidc = _oidc(request)
    if oidc is None:
        return render(
            request,
            "error.html",
            {"heading": "Page not found", "message": "Single sign-on is not set up."},
            status_code=404,
        )
    session, new_token = await _anonymous_session(services, request)
    try:
        url, pending = await oidc.start()
    except OidcError as exc:
        log.warning("oidc_start_failed", problem=str(exc))
        return _sign_in_page(
            request,
            services,
            session,
            error="Your organisation's sign-in service cannot be reached. Try again later.",
            status_code=502,
        )
    await run_in_threadpool(people.set_pending, services.db, session, pending)
    response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    if new_token:
        set_session_cookie(response, new_token, services.settings)
    return response


@router.get("/web/oidc/callback")
async def oidc_callback(request: Request, services: ServicesDep) -> Response:
    oidc = _oidc(request)
    session = await browser_session(request, services)
    if oidc is None or session is None:
        return RedirectResponse("/web/sign-in?ended=expired", status_code=303)
    if session.person is not None:
        return RedirectResponse("/web/", status_code=303)
    parameters = {
        key: value for key, value in request.query_params.items() if key in ("code", "state", "error")
    }
    await run_in_threadpool(people.set_pending, services.db, session, None)  # a state is good for one try
    try:
        identity = await oidc.finish(session.pending, parameters)
    except OidcError as exc:
        log.warning("oidc_sign_in_failed", problem=str(exc))
        return _sign_in_page(
            request,
            services,
            session,
            error="Signing in through your organisation did not complete. Try again.",
            status_code=401,
        )
    person = await run_in_threadpool(
        people.sign_in_with_oidc,
        services.db,
        identity=identity,
        clock=services.clock,
        request_id=_request_id(request),
    )
    if person is None:
        return _sign_in_page(
            request,
            services,
            session,
            error="Your account does not name the trust you work for, or it has been disabled here. "
            "Ask your administrator.",
            status_code=403,
        )
    return await _signed_in_response(services, session, person)
