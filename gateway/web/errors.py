"""How the pages answer when something is refused: an HTML page, never a FHIR document or a trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fhir_profiles.outcome import OperationOutcomeError
from gateway.api.deps import Services, run_for
from gateway.web.rendering import PAGE_HEADERS, render
from gateway.web.session import FormRefused, SignedIn, SignInRequired

T = TypeVar("T")


class PageError(Exception):
    """A domain refusal on its way to an error page."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def page_error(refusal: OperationOutcomeError) -> PageError:
    if refusal.status_code == 404:
        return PageError(404, "There is nothing here, or it belongs to another trust.")
    return PageError(refusal.status_code, "; ".join(issue.diagnostics for issue in refusal.issues))


async def for_person(
    services: Services, request: Request, person: SignedIn, action: Callable[..., T], /, **arguments: Any
) -> T:
    """Run a domain service as the signed-in person (in a worker thread); refusals become pages."""
    try:
        return await run_for(
            services, person.caller, str(request.scope["state"]["request_id"]), action, **arguments
        )
    except OperationOutcomeError as refusal:
        raise page_error(refusal) from None


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    target = "/web/sign-in?ended=expired" if exc.expired else "/web/sign-in"
    if request.headers.get("accept", "").startswith("application/json"):
        return Response('{"signed_in": false}', status_code=401, media_type="application/json")
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


async def _form_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormRefused)
    return render(
        request, "error.html", {"heading": "The form was refused", "message": exc.reason}, status_code=403
    )


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    heading = "Page not found" if exc.status_code == 404 else "That could not be done"
    return render(
        request, "error.html", {"heading": heading, "message": exc.message}, status_code=exc.status_code
    )


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    SignInRequired: _sign_in_required,
    FormRefused: _form_refused,
    PageError: _page_error,
}
__all__ = ["EXCEPTION_HANDLERS", "PAGE_HEADERS", "PageError", "for_person"]
