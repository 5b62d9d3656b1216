"""`create_app(settings)`: wiring only. Routes live in `api/`, rules in `domain/` and `fhir_profiles/`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway import __version__
from gateway.api import (
    codesystems,
    communications,
    measures,
    metadata,
    operations,
    process_message,
    read,
    subscriptions,
    tasks,
    token,
)
from gateway.api.deps import Services
from gateway.api.errors import install_error_handlers
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.schemas import FHIR_SCHEMAS
from gateway.clock import Clock, system_clock
from gateway.dispatch.worker import Dispatcher
from gateway.domain.expiry import run_expiry
from gateway.domain.sealing import run_housekeeping
from gateway.kpi.service import run_kpi_fold
from gateway.notify.service import notify_status_change
from gateway.security import build_token_service
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import ProviderDirectory
from gateway.store.writer import BatchWriter


def create_app(settings: Settings, *, db: Database | None = None, clock: Clock = system_clock) -> FastAPI:
    app = FastAPI(
        title="Homecare e-prescribing gateway",
        version=__version__,
        summary="One FHIR interface between NHS trusts and homecare medicine providers",
        docs_url="/docs",
        redoc_url=None,
    )
    database = db or Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
    writer = BatchWriter(database)
    tokens = build_token_service(settings, database, clock)
    dispatcher = Dispatcher(
        database,
        clock=clock,
        settings=settings.dispatcher_settings(),
        signing_keys=tokens.signing_keys,
        on_status_change=notify_status_change,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop)) if settings.run_dispatcher else None
        expiring = (
            asyncio.create_task(
                run_expiry(
                    database, clock=clock, interval=settings.expiry_check_seconds, notify=notify_status_change
                )
            )
            if settings.run_dispatcher
            else None
        )
        housekeeping = (
            asyncio.create_task(run_housekeeping(database, tokens, interval=settings.audit_seal_seconds))
            if settings.audit_seal_seconds
            else None
        )
        # The KPI figures follow the event log (gateway.kpi.service): the one place they are kept up to date.
        kpi_folding = (
            asyncio.create_task(
                run_kpi_fold(
                    database,
                    clock=clock,
                    interval=settings.kpi_fold_seconds,
                    close_days=settings.kpi_month_close_days,
                )
            )
            if settings.kpi_fold_seconds
            else None
        )
        try:
            yield
        finally:
            stop.set()
            for background in (housekeeping, expiring, kpi_folding):
                if background is not None:
                    background.cancel()
            if running is not None:
                await running
            writer.close()
            tokens.close()

    app.router.lifespan_context = lifespan
    app.state.services = Services(
        settings=settings,
        db=database,
        clock=clock,
        providers=ProviderDirectory(database, ttl=settings.provider_cache_seconds),
        writer=writer,
        doorbell=dispatcher.doorbell,
        tokens=tokens,
        on_status_change=notify_status_change,
    )
    app.include_router(token.router)
    app.include_router(process_message.router)
    app.include_router(read.router)
    app.include_router(tasks.router)
    app.include_router(communications.router)
    app.include_router(subscriptions.router)
    app.include_router(metadata.router)
    app.include_router(codesystems.router)
    app.include_router(measures.router)
    app.include_router(operations.router)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with the hand-written FHIR schemas; cached on the app."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    document.setdefault("components", {}).setdefault("schemas", {}).update(FHIR_SCHEMAS)
    app.openapi_schema = document
    return document
