"""`/health` (liveness) and `/ready` (readiness): unauthenticated, carrying no data.

`/health` says the process answers HTTP, and nothing else: a load balancer or Docker restarts a
process that stops answering it. `/ready` also asks the database, within
`HOMECARE_READY_TIMEOUT_SECONDS`: a gateway whose database is away answers 503 with an
OperationOutcome, so traffic goes elsewhere until it is back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError, success_outcome
from gateway.api.deps import ServicesDep
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content
from gateway.logs import get_logger
from gateway.store.errors import StoreError
from gateway.store.health import ping

router = APIRouter(tags=["operations"])
log = get_logger("gateway.health")

_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "An informational OperationOutcome", "content": fhir_content("OperationOutcome")}
}


@router.get(
    "/health",
    summary="Liveness: the process answers (no database, no authentication, no data)",
    response_class=FhirResponse,
    responses=_OK,
)
async def health() -> Response:
    return FhirResponse(success_outcome("alive"))


@router.get(
    "/ready",
    summary="Readiness: the database answers within HOMECARE_READY_TIMEOUT_SECONDS (no authentication, no data)",
    response_class=FhirResponse,
    responses={
        **_OK,
        503: {
            "description": "Not ready: the database does not answer",
            "content": fhir_content("OperationOutcome"),
        },
    },
)
async def ready(services: ServicesDep) -> Response:
    try:
        await asyncio.wait_for(run_in_threadpool(ping, services.db), services.settings.ready_timeout_seconds)
    except (StoreError, TimeoutError) as exc:
        log.warning("not_ready", reason=type(exc).__name__)
        raise OperationOutcomeError(
            503,
            [
                Issue(
                    IssueType.TRANSIENT,
                    ErrorCode.SERVER_ERROR,
                    "Not ready: the database does not answer; try again shortly",
                )
            ],
            headers={"Retry-After": "5"},
        ) from None
    return FhirResponse(success_outcome("ready"))
