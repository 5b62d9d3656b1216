"""Request context: request and correlation ids on every response and log line; one access log line;
the headers every answer carries; the deadline for a request's body; the per-address rate limits;
and the audit, coalesced, of refusals a flood can be made of (401 for a bearer token, 403 for a
scope, 429, 5xx).

A pure ASGI middleware (no per-request task or body buffering): it sits on the hot path.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth.audit import Action
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.errors import outcome_response, unexpected_error_response
from gateway.api.throttle import api_throttled, token_throttled
from gateway.domain.refusals import REQUEST_SOURCE, Refusal
from gateway.logs import get_logger
from gateway.store.errors import StoreError

log = get_logger("gateway.access")
_SAFE_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# On every answer: most carry patient data, and none should be kept by a cache or sniffed as
# another content type than the one declared.
_ALWAYS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


def _body_too_slow(seconds: float) -> OperationOutcomeError:
    return OperationOutcomeError(
        408,
        [
            Issue(
                IssueType.TIMEOUT,
                ErrorCode.INVALID_VALUE,
                f"The request body did not arrive within {seconds:g} seconds; nothing was stored",
            )
        ],
        headers={"Connection": "close"},
    )


def _with_body_deadline(receive: Receive, seconds: float) -> Receive:
    """`receive`, refusing with 408 (and closing the connection) a body that is not complete within
    `seconds` of the request's start. Once the body is in, waiting (for a disconnect) is not timed."""
    deadline = time.monotonic() + seconds
    body_done = False

    async def receive_in_time() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            # asyncio's own timeout: the server runs on asyncio, and anyio's cancel scope costs
            # several times as much on every body read of every request.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                message = await receive()
        except TimeoutError:
            raise _body_too_slow(seconds) from None
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_in_time


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
        REQUEST_SOURCE.set(_source(scope))
        receive = _with_body_deadline(receive, _body_timeout(scope))
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
                # Audited before it is answered, like every other refusal.
                await _audit_refusal(scope, status, request_id)
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in _ALWAYS if name not in present]
                message["headers"] = [*headers, *extra]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged before the last byte leaves: whoever holds the answer can find its line.
                log_request()
            await send(message)

        try:
            throttled = _throttle_address(scope)
            if throttled is not None:
                await throttled(scope, receive, send_with_ids)
            else:
                await self.app(scope, receive, send_with_ids)
        except OperationOutcomeError as refusal:
            # A body too slow for its deadline while no route was reading it (a route's own reads
            # are answered by the error handler).
            if response_started:
                raise
            await outcome_response(refusal)(scope, receive, send_with_ids)
        except Exception as exc:
            if response_started:
                raise
            response = unexpected_error_response(exc)
            await response(scope, receive, send_with_ids)
        finally:
            log_request()
            structlog.contextvars.clear_contextvars()


def _services(scope: Scope) -> Any:
    return getattr(getattr(scope.get("app"), "state", None), "services", None)


def _source(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _throttle_address(scope: Scope) -> ASGIApp | None:
    """The 429 answer when the source address is over its limit for the token endpoint or the API."""
    services = _services(scope)
    if services is None:
        return None
    path: str = scope["path"]
    if path == "/auth/token":
        wait = services.limits.token_per_address.hit(_source(scope))
        if wait is not None:
            scope["state"]["refusal_reason"] = "address-rate-limit"
            return token_throttled(wait, "address")
    elif path.startswith("/fhir"):
        wait = services.limits.api_per_address.hit(_source(scope))
        if wait is not None:
            scope["state"]["refusal_reason"] = "address-rate-limit"
            return outcome_response(api_throttled(wait, "address"))
    return None


def _route_template(scope: Scope) -> str:
    """The route's path template (never the path itself: it may carry anything), method first."""
    route: Any = scope.get("route")
    template = getattr(route, "path", None) or _match_template(scope) or "unmatched"
    return f"{scope['method']} {template}"


def _match_template(scope: Scope) -> str | None:
    """For a request refused before routing: the first documented path template it matches."""
    app: Any = scope.get("app")
    if app is None:
        return None
    templates: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "path_templates", None)
    if templates is None:
        templates = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"), path)
            for path in app.openapi().get("paths", {})
        ]
        app.state.path_templates = templates
    return next((template for pattern, template in templates if pattern.match(scope["path"])), None)


_PROBES = frozenset({"/health", "/ready"})


async def _audit_refusal(scope: Scope, status: int, request_id: str) -> None:
    """Audit a 401 for a bearer token, a 403 for a scope, a 429 or a 5xx: the first alike in a window
    at once, the rest counted (gateway.domain.refusals). Never fails the request."""
    state = scope["state"]
    reason = state.get("refusal_reason")
    if not (status == 429 or status >= 500 or (status in (401, 403) and reason)):
        return
    if scope["path"] in _PROBES:
        return  # a readiness 503 is the probe's answer (the database is away), not a refused request
    services = _services(scope)
    if services is None:
        return
    caller = state.get("caller")
    action, resource_type, resource_id = state.get("refusal_audit", (Action.REQUEST, None, None))
    refusal = Refusal(
        status=status,
        route=_route_template(scope),
        client_id=state.get("client_id"),
        role=caller.role.value if caller is not None else None,
        ods_code=caller.ods_code if caller is not None else None,
        source=_source(scope),
        reason=reason or ("server-error" if status >= 500 else None),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
    )
    first = services.refusals.note(refusal, request_id=request_id)
    if first is None:
        return
    try:
        await run_in_threadpool(services.refusals.write, [first])
    except StoreError as exc:  # the request is refused already: its audit row must not change that
        log.error("refusal_audit_failed", error_type=type(exc).__name__)


def _body_timeout(scope: Scope) -> float:
    """The app's setting (the app is in the scope, with its services), or the default."""
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    return float(services.settings.body_timeout_seconds) if services is not None else 30.0
