"""`POST /fhir/$process-message` (and the EPS path `/FHIR/R4/$process-message`)."""

from __future__ import annotations

from functools import partial

import orjson
from fastapi import APIRouter, Request
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from auth.audit import Action, Outcome
from auth.identity import Caller
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.deps import CurrentCaller, Services, ServicesDep
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.domain import access, cancellation, dispensing, intake
from gateway.store.prescriptions import insert_prescription

router = APIRouter(tags=["messaging"])

_ACCEPTED_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json"})


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
    if declared.isdigit() and int(declared) > limit:
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
        document = orjson.loads(body)
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


def audit_message(
    services: Services,
    caller: Caller,
    request_id: str,
    *,
    outcome: Outcome,
    status: int,
    resource_id: str | None = None,
) -> None:
    access.record(
        services.db,
        caller=caller,
        action=Action.CREATE,
        outcome=outcome,
        resource_type="Bundle",
        resource_id=resource_id,
        status=status,
        request_id=request_id,
        clock=services.clock,
    )


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
        **outcome_responses(400, 401, 403, 409, 413, 415, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": {"$ref": "#/components/schemas/HomecareMessageBundle"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/HomecareMessageBundle"}},
            },
        }
    },
)
@router.post("/FHIR/R4/$process-message", include_in_schema=False)
async def process_message(request: Request, caller: CurrentCaller, services: ServicesDep) -> Response:
    request_id = request.scope["state"]["request_id"]
    try:
        body, document = await read_fhir_json_body(request, services.settings.max_body_bytes)
        answer = await _receive(services, body=body, document=document, caller=caller, request_id=request_id)
    except OperationOutcomeError as refusal:
        await run_in_threadpool(
            audit_message, services, caller, request_id, outcome=Outcome.REFUSED, status=refusal.status_code
        )
        raise
    if answer.replayed:
        # An accepted message's audit row is written with it; a replay of it gets one of its own.
        await run_in_threadpool(
            audit_message,
            services,
            caller,
            request_id,
            outcome=Outcome.REPLAYED,
            status=answer.status_code,
            resource_id=(answer.location or "").rpartition("/")[2] or None,
        )
    headers = {"Location": answer.location} if answer.location else None
    return FhirResponse(answer.body, status_code=answer.status_code, headers=headers)


async def _receive(
    services: Services, *, body: bytes, document: object, caller: Caller, request_id: str
) -> intake.IntakeAnswer:
    # Validation is CPU work and runs here; the write joins the next group commit.
    decision = intake.check_message(
        body=body,
        document=document,
        caller=caller,
        providers=services.providers,
        request_id=request_id,
        clock=services.clock,
    )
    if isinstance(decision, intake.Refusal):
        return await run_in_threadpool(intake.answer_refusal, services.db, decision)
    if isinstance(decision, intake.CancelRequest):
        return await _cancel(services, decision, body=body, caller=caller, request_id=request_id)
    if isinstance(decision, intake.DispenseRequest):
        try:
            status, answer = await run_in_threadpool(
                dispensing.receive_dispense_notification,
                services.db,
                notification=decision.notification,
                body=body,
                digest=decision.digest,
                caller=caller,
                request_id=request_id,
                clock=services.clock,
                notify=services.on_status_change,
            )
        except IntegrityError:
            return await run_in_threadpool(
                intake.earlier_answer, services.db, decision.envelope, decision.digest
            )
        return intake.IntakeAnswer(status, answer, None, replayed=False)
    try:
        await services.writer.run(partial(insert_prescription, new=decision.rows))
    except IntegrityError:
        return await run_in_threadpool(intake.resolve_conflict, services.db, decision)
    services.doorbell.ring(decision.order.performer_ods)
    return decision.answer


async def _cancel(
    services: Services, decision: intake.CancelRequest, *, body: bytes, caller: Caller, request_id: str
) -> intake.IntakeAnswer:
    try:
        answer = await run_in_threadpool(
            cancellation.receive_cancellation,
            services.db,
            cancellation=decision.cancellation,
            body=body,
            digest=decision.digest,
            caller=caller,
            request_id=request_id,
            clock=services.clock,
            notify=services.on_status_change,
        )
    except IntegrityError:
        return await run_in_threadpool(intake.earlier_answer, services.db, decision.envelope, decision.digest)
    if answer.waiting_for_provider:
        services.doorbell.ring()
        # The provider usually answers in time: then the trust gets the outcome now, not only later.
        answer = await run_in_threadpool(
            cancellation.await_provider_answer,
            services.db,
            answer,
            wait_seconds=services.settings.cancel_wait_seconds,
        )
    location = f"/fhir/Bundle/{answer.prescription_id}"
    return intake.IntakeAnswer(answer.status_code, answer.body, location, replayed=False)
