"""`create_app(settings)`: wiring only. Routes live in `api/`, rules in `domain/` and `fhir_profiles/`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from gateway import __version__
from gateway.api import (
    codesystems,
    communications,
    dispenses,
    health,
    measures,
    metadata,
    process_message,
    read,
    subscriptions,
    tasks,
    token,
)
from gateway.api.deps import Services
from gateway.api.documentation import finish
from gateway.api.errors import install_error_handlers
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.process_message import ProcessMessageFastPath
from gateway.api.schemas import FHIR_SCHEMAS
from gateway.api.throttle import RateLimits
from gateway.clock import Clock, system_clock
from gateway.fault_injection import install as install_test_fault
from gateway.runner import Runtime
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.web import install as install_web_pages

DOCS_ASSETS = "/docs/assets"


def create_app(settings: Settings, *, db: Database | None = None, clock: Clock = system_clock) -> FastAPI:
    # Swagger UI's script and styles come from the fastapi-offline package (under /docs/assets), not a
    # CDN: the API document works where the gateway runs without internet.
    app = FastAPIOffline(
        title="Homecare e-prescribing gateway",
        version=__version__,
        summary="One FHIR interface between NHS trusts and homecare medicine providers",
        docs_url="/docs",
        redoc_url=None,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    install_test_fault(settings.test_fault)
    runtime = Runtime.create(settings, db=db, clock=clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with runtime.running(dispatch=settings.run_dispatcher):
            yield

    app.router.lifespan_context = lifespan
    app.state.runtime = runtime
    app.state.services = Services(
        settings=settings,
        context=runtime.context,
        tokens=runtime.tokens,
        limits=RateLimits(settings),
        refusals=runtime.refusals,
    )
    for router in (
        token.router,
        process_message.router,
        read.router,
        tasks.router,
        dispenses.router,
        communications.router,
        subscriptions.router,
        metadata.router,
        codesystems.router,
        measures.router,
        health.router,
    ):
        app.include_router(router)
    install_web_pages(app, settings)
    install_error_handlers(app)
    # Added first, so it runs inside the request middleware (the last added is the outermost).
    app.add_middleware(ProcessMessageFastPath)
    app.add_middleware(RequestContextMiddleware)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with the hand-written FHIR schemas; cached on the app."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    document.setdefault("components", {}).setdefault("schemas", {}).update(FHIR_SCHEMAS)
    app.openapi_schema = finish(document)
    return document
