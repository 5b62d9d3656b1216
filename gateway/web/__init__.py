"""Server-rendered pages for clinicians (routes, templates, static assets), over the same domain
services as the API. `install(app, settings)` adds them to the gateway."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from gateway.settings import Settings
from gateway.web import pages, performance, sign_in
from gateway.web.errors import EXCEPTION_HANDLERS
from gateway.web.oidc import OidcSignIn
from gateway.web.rendering import STATIC


def install(app: FastAPI, settings: Settings) -> None:
    app.state.oidc = OidcSignIn(settings) if settings.oidc_issuer else None
    app.include_router(sign_in.router)
    app.include_router(pages.router)
    # Public: no sign-in, aggregates only.
    app.include_router(performance.router)
    # Served by the gateway itself: the pages work on a network without internet.
    app.mount("/web/static", StaticFiles(directory=STATIC), name="web-static")
    app.include_router(pages.fallback)
    for exception, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exception, handler)
