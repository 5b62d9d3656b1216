"""`POST /fhir/$process-message` (and the EPS path `/FHIR/R4/$process-message`)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from fhir_profiles import strict_json
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.deps import CurrentCaller, ServicesDep, request_id
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
