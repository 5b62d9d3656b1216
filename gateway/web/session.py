"""The browser's side of a session: the cookie, the signed-in person behind it, CSRF on every form,
and reading a form body. Everything it decides comes from gateway.domain.people."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from auth.identity import Caller
from gateway.api.deps import Services, ServicesDep
from gateway.domain import people
from gateway.domain.worklist import ActionSettings
from gateway.settings import Settings

MAX_FORM_BYTES = 64 * 1024


class SignInRequired(Exception):  # noqa: N818  (control flow: answered with a redirect to sign in)
    def __init__(self, *, expired: bool) -> None:
        super().__init__("sign-in required")
        self.expired = expired


class FormRefused(Exception):  # noqa: N818  (answered with a page that says why)
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def cookie_name(settings: Settings) -> str:
    # The __Host- prefix makes the browser refuse the cookie unless Secure, for this host, path /.
    return "__Host-hc_session" if settings.secure_cookies else "hc_session"


def session_policy(settings: Settings) -> people.SessionPolicy:
    return people.SessionPolicy(
        idle=timedelta(seconds=settings.web_session_idle_seconds),
        absolute=timedelta(seconds=settings.web_session_max_seconds),
        lockout_attempts=settings.web_lockout_attempts,
        lockout=timedelta(seconds=settings.web_lockout_seconds),
    )


def action_settings(settings: Settings) -> ActionSettings:
    return ActionSettings(
        acceptance=timedelta(hours=settings.worklist_acceptance_hours),
        expiring=timedelta(days=settings.worklist_expiring_days),
        recent=timedelta(days=settings.worklist_recent_days),
    )


def set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    # No Max-Age: the cookie goes with the browser; the server ends the session when it must.
    response.set_cookie(
        cookie_name(settings),
        token,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",  # strict would drop it on the identity provider's redirect back
        path="/",
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        cookie_name(settings), path="/", httponly=True, secure=settings.secure_cookies, samesite="lax"
    )


async def browser_session(
    request: Request, services: Services, *, touch: bool = True
) -> people.BrowserSession | None:
    token = request.cookies.get(cookie_name(services.settings))
    return await run_in_threadpool(
        people.resume_session,
        services.db,
        token=token,
        policy=session_policy(services.settings),
        clock=services.clock,
        touch=touch,
    )


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A request from a signed-in person: who, their session, and the Caller they act as."""

    person: people.Person
    session: people.BrowserSession
    caller: Caller


def _signed_in(session: people.BrowserSession | None, request: Request, services: Services) -> SignedIn:
    if session is None or session.person is None:
        # A cookie whose session is gone: it ended (idle, too old, signed out elsewhere, disabled).
        had_cookie = cookie_name(services.settings) in request.cookies
        raise SignInRequired(expired=session is None and had_cookie)
    request.scope["state"]["client_id"] = people.WEB_CLIENT_ID
    return SignedIn(session.person, session, people.caller_for(session.person))


async def require_person(request: Request, services: ServicesDep) -> SignedIn:
    return _signed_in(await browser_session(request, services), request, services)


async def require_person_quietly(request: Request, services: ServicesDep) -> SignedIn:
    """For background polling: does not count as activity, so an idle session still ends."""
    return _signed_in(await browser_session(request, services, touch=False), request, services)


Person = Annotated[SignedIn, Depends(require_person)]
PollingPerson = Annotated[SignedIn, Depends(require_person_quietly)]


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body (first value of each field); anything else is refused."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise FormRefused("The form was not sent as a web form.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused("The form is too large.")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=50)
    return {name: values[0] for name, values in fields.items()}


def check_csrf(session: people.BrowserSession, form: dict[str, str]) -> None:
    """The form must carry this session's synchroniser token: another site cannot know it."""
    if not people.csrf_matches(session, form.get("csrf_token")):
        raise FormRefused(
            "This form has expired or did not come from these pages. Go back, reload the page and try again."
        )
