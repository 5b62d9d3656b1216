"""`/metrics`: Prometheus metrics for operators."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.api.deps import ServicesDep
from gateway.metrics import render_metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: outbox depth and age, sends by provider and outcome, breakers, dead letters",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(services: ServicesDep) -> Response:
    body = await run_in_threadpool(render_metrics, services.db, services.clock)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
