"""`POST /fhir/$process-message` (and the EPS path `/FHIR/R4/$process-message`).

The route is declared to FastAPI (it is in the API document, and FastAPI answers it when the fast
path below is not installed), but a running gateway answers it from `ProcessMessageFastPath`, a
plain ASGI app in front of FastAPI's routing: intake is the hot path, and the framework's routing,
dependency resolution and exception middleware cost more per message than parsing it does. Both
ways run the same function (`_process`) with the same authentication (`deps.authenticate`) and
the app's own exception handlers, so every answer is the same.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from auth.identity import Caller
from fhir_profiles import strict_json
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.deps import CurrentCaller, Services, ServicesDep, authenticate, request_id
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.domain import intake

router = APIRouter(tags=["messaging"])

_ACCEPTED_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json"})
_MESSAGE_BODY = {
    "required": True,
    "content": {
        "application/fhir+json": {"schema": {"$ref": "#/components/schemas/HomecareMessageBundle"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/HomecareMessageBundle"}},
    },
}


async def read_fhir_json_body(request: Request, limit: int) -> tuple[bytes, object]:
    """The raw body (kept as received) and its parsed JSON, or the OperationOutcome that explains why not."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _ACCEPTED_MEDIA_TYPES:
        raise OperationOutcomeError(
            415,
            [
                Issue(
                    IssueType.NOT_SUPPORTED,
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "Send FHIR JSON with Content-Type application/fhir+json (or application/json)",
                )
            ],
        )
    too_large = OperationOutcomeError(
        413,
        [
            Issue(
                IssueType.TOO_LONG,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The body is larger than this gateway accepts ({limit} bytes)",
            )
        ],
    )
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise OperationOutcomeError(
            400, [Issue(IssueType.STRUCTURE, ErrorCode.INVALID_JSON, "The request body is empty")]
        )
    try:
        document = strict_json.loads(body)
    except strict_json.DuplicateKeyError as exc:
        raise OperationOutcomeError(400, [exc.issue()]) from exc
    except orjson.JSONDecodeError as exc:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_JSON,
                    f"The body is not valid JSON (at line {exc.lineno}, column {exc.colno})",
                )
            ],
        ) from exc
    return body, document


@router.post(
    "/fhir/$process-message",
    summary="Send a prescription message (EPS-compatible)",
    description="Needs the scope of the message's event: prescription-order `system/MedicationRequest.c`, "
    "prescription-order-update `system/MedicationRequest.u`, dispense-notification "
    "`system/MedicationDispense.c`. The MessageHeader's sender must be the caller's own organisation.",
    response_class=FhirResponse,
    responses={
        200: {
            "description": "Accepted: an informational OperationOutcome",
            "content": fhir_content("OperationOutcome"),
        },
        202: {
            "description": "A cancellation sent to the provider, whose answer did not come within "
            "HOMECARE_CANCEL_WAIT_SECONDS: the outcome comes through the items' Tasks",
            "content": fhir_content("OperationOutcome"),
        },
        **outcome_responses(400, 401, 403, 404, 409, 413, 415, 422),
    },
    openapi_extra={"requestBody": _MESSAGE_BODY},
)
@router.post("/FHIR/R4/$process-message", include_in_schema=False)
async def process_message(request: Request, caller: CurrentCaller, services: ServicesDep) -> Response:
    return await _process(request, caller, services)


async def _process(request: Request, caller: Caller, services: Services) -> Response:
    try:
        body, document = await read_fhir_json_body(request, services.settings.max_body_bytes)
    except OperationOutcomeError as refusal:
        await intake.record_refusal(
            services.context, caller=caller, request_id=request_id(request), refusal=refusal
        )
        raise
    answer = await intake.receive_message(
        services.context, body=body, document=document, caller=caller, request_id=request_id(request)
    )
    headers = {"Location": answer.location} if answer.location else None
    return FhirResponse(answer.body, status_code=answer.status_code, headers=headers)


PATHS = frozenset({"/fhir/$process-message", "/FHIR/R4/$process-message"})


class ProcessMessageFastPath:
    """ASGI middleware: `POST $process-message` straight to `_process`; every other request to `app`.

    Installed inside the request middleware (request ids, access log, headers, refusal audit), which
    sees these requests as any other: the route is put in the scope as FastAPI's router would."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in _ROUTES
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        app: FastAPI = scope["app"]
        services: Services = app.state.services
        scope["route"] = _ROUTES[scope["path"]]
        request = Request(scope, receive, send)
        try:
            caller = authenticate(services, request, request.headers.get("authorization"))
            response = await _process(request, caller, services)
        except Exception as exc:
            handler = _handler_for(app, exc)
            if handler is None:
                raise  # the request middleware answers 500, as for any route
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)


# The routes this module declares, by path: what the fast path puts in the scope as `route`.
_ROUTES: dict[str, APIRoute] = {
    route.path: route
    for route in router.routes
    if isinstance(route, APIRoute) and route.path in PATHS and "POST" in (route.methods or ())
}


def _handler_for(app: FastAPI, exc: Exception) -> Any:
    """The app's handler for `exc`, found as Starlette's exception middleware finds it (by class)."""
    for kind in type(exc).__mro__:
        if kind is not Exception and kind in app.exception_handlers:
            return app.exception_handlers[kind]
    return None


@router.post(
    "/fhir/Bundle/$validate",
    summary="Check a message as $process-message would, storing nothing",
    description="The same body, authentication and scope as $process-message (the scope of the message's "
    "event; the MessageHeader's sender must be the caller's organisation). The answer is 200 with an "
    "OperationOutcome either way, as FHIR's $validate answers: one informational issue when "
    "$process-message would take the message up, otherwise every problem it would refuse it for "
    "(structure, the homecare profile, an order's provider). Duplicates and a cancellation's or "
    "dispense's prescription depend on what is stored and are judged by $process-message only.",
    response_class=FhirResponse,
    responses={
        200: {
            "description": "Validated: an OperationOutcome (information when valid, errors otherwise)",
            "content": fhir_content("OperationOutcome"),
        },
        **outcome_responses(400, 401, 403, 413, 415),
    },
    openapi_extra={"requestBody": _MESSAGE_BODY},
)
async def validate_message(request: Request, caller: CurrentCaller, services: ServicesDep) -> Response:
    body, document = await read_fhir_json_body(request, services.settings.max_body_bytes)
    outcome = await intake.validate_only(services.context, body=body, document=document, caller=caller)
    return FhirResponse(outcome)
