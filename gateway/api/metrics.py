"""The operators' admin app: `/metrics` (Prometheus) and `/health`, on a listener of its own, never on
the API.

`serve` and `worker` start it on `HOMECARE_ADMIN_LISTEN` (loopback by default, so only the machine
itself can scrape it); with `HOMECARE_METRICS_TOKEN` set a scraper must also send that bearer token.
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.metrics import render_metrics
from gateway.store.db import Database
from gateway.store.errors import StoreError


def admin_app(db: Database, clock: Clock, *, token: str | None = None) -> Starlette:
    """`GET /metrics`: the process's counters and the database's outbox figures; `GET /health`: the
    process answers (a worker's liveness: it has no API)."""

    async def metrics(request: Request) -> Response:
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return PlainTextResponse(
                    "A bearer token (HOMECARE_METRICS_TOKEN) is required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        try:
            body = await run_in_threadpool(render_metrics, db, clock)
        except StoreError:
            return PlainTextResponse("The database does not answer\n", status_code=503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def health(_: Request) -> Response:
        return PlainTextResponse("alive\n")

    return Starlette(
        routes=[Route("/metrics", metrics, methods=["GET"]), Route("/health", health, methods=["GET"])]
    )
