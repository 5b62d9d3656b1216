"""Request context: request and correlation ids on every response and log line; one access log line.

A pure ASGI middleware (no per-request task or body buffering): it sits on the hot path.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import unexpected_error_response
from gateway.logs import get_logger

log = get_logger("gateway.access")
_SAFE_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _valid_uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _valid_uuid(_header(scope, b"x-request-id")) or str(uuid.uuid4())
        correlation_id = _header(scope, b"x-correlation-id")
        if correlation_id is not None and not _SAFE_CORRELATION_ID.fullmatch(correlation_id):
            correlation_id = None
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation_id)
        extra = [(b"x-request-id", request_id.encode())]
        if correlation_id:
            extra.append((b"x-correlation-id", correlation_id.encode()))
        status = 500
        response_started = False
        logged = False

        def log_request() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            route: Any = scope.get("route")
            log.info(
                "request",
                method=scope["method"],
                route=getattr(route, "path", "unmatched"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client_id=scope["state"].get("client_id"),
            )

        async def send_with_ids(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), *extra]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged before the last byte leaves: whoever holds the answer can find its line.
                log_request()
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        except Exception as exc:
            if response_started:
                raise
            response = unexpected_error_response(exc)
            await response(scope, receive, send_with_ids)
        finally:
            log_request()
            structlog.contextvars.clear_contextvars()
