"""Performance figures: `Measure` definitions, `MeasureReport` searches, `$evaluate-measure` and a
CSV export. Public without a token (every trust together, small numbers hidden); with a token, the
caller's own figures (a trust's prescriptions, or a provider's), in full."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import SecurityScopes
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from auth.identity import Caller
from auth.scopes import READ_TASKS
from gateway.api.deps import Services, ServicesDep, authorise, smart_backend_services
from gateway.api.process_message import read_fhir_json_body
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.kpi import publication

router = APIRouter(tags=["kpi"])


async def kpi_reader(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Depends(smart_backend_services)],
) -> Caller | None:
    """No token: the public. A token: its caller, who needs the scope to read status (system/Task.rs)."""
    if authorization is None:
        return None
    return await authorise(SecurityScopes([READ_TASKS]), request, authorization)


KpiReader = Annotated[Caller | None, Depends(kpi_reader)]


def _publishing(services: Services) -> publication.Publishing:
    settings = services.settings
    return publication.Publishing(
        threshold=settings.kpi_small_number_threshold, close_days=settings.kpi_month_close_days
    )


_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The resource", "content": fhir_content("FhirResource")},
    **outcome_responses(400, 401, 403, 404),
}


@router.get(
    "/fhir/Measure",
    summary="The performance measures (KPIs): each rule in words (public)",
    response_class=FhirResponse,
    responses={200: _READ_RESPONSES[200]},
)
async def list_measures(services: ServicesDep) -> Response:
    return FhirResponse(publication.measures_bundle(services.settings.base_url))


@router.get(
    "/fhir/Measure/{id}",
    summary="One performance measure (public)",
    response_class=FhirResponse,
    responses={200: _READ_RESPONSES[200], **outcome_responses(404)},
)
async def read_measure(id: str) -> Response:
    return FhirResponse(publication.read_measure(id))


@router.get(
    "/fhir/MeasureReport",
    summary="Summary MeasureReports for a month: measure, subject (provider ODS), period=YYYY-MM",
    response_class=FhirResponse,
    responses=_READ_RESPONSES,
)
async def search_measure_reports(request: Request, caller: KpiReader, services: ServicesDep) -> Response:
    bundle = await run_in_threadpool(
        publication.search_reports,
        services.db,
        caller=caller,
        parameters=list(request.query_params.multi_items()),
        now=services.clock(),
        publishing=_publishing(services),
        base_url=services.settings.base_url,
    )
    return FhirResponse(bundle)


async def _evaluate(
    id: str, request: Request, caller: Caller | None, services: Services, body: list[tuple[str, str]]
) -> Response:
    report = await run_in_threadpool(
        publication.evaluate,
        services.db,
        caller=caller,
        measure_id=id,
        parameters=list(request.query_params.multi_items()) + body,
        now=services.clock(),
        publishing=_publishing(services),
    )
    return FhirResponse(report)


_EVALUATE_SUMMARY = (
    "A summary MeasureReport over whole months: periodStart, periodEnd, subject (provider ODS)"
)
_MAX_PARAMETERS_BYTES = 16_384


@router.get(
    "/fhir/Measure/{id}/$evaluate-measure",
    summary=_EVALUATE_SUMMARY,
    response_class=FhirResponse,
    responses=_READ_RESPONSES,
)
async def evaluate_measure(id: str, request: Request, caller: KpiReader, services: ServicesDep) -> Response:
    return await _evaluate(id, request, caller, services, [])


@router.post(
    "/fhir/Measure/{id}/$evaluate-measure",
    summary=_EVALUATE_SUMMARY + "; in the query or a Parameters body",
    response_class=FhirResponse,
    responses={**_READ_RESPONSES, **outcome_responses(413, 415)},
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/fhir+json": {"schema": {"type": "object"}}},
        }
    },
)
async def evaluate_measure_by_post(
    id: str, request: Request, caller: KpiReader, services: ServicesDep
) -> Response:
    body: list[tuple[str, str]] = []
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        _, resource = await read_fhir_json_body(request, _MAX_PARAMETERS_BYTES)
        body = publication.parameters_from(resource)
    return await _evaluate(id, request, caller, services, body)


@router.get(
    "/kpi/export.csv",
    summary="A month's figures per provider as CSV (month=YYYY-MM)",
    response_class=Response,
    responses={
        200: {
            "description": "CSV, one row per measure and provider, then breakdowns",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **outcome_responses(400, 401, 403),
    },
)
async def export_csv(request: Request, caller: KpiReader, services: ServicesDep) -> Response:
    text = await run_in_threadpool(
        publication.export_csv,
        services.db,
        caller=caller,
        parameters=list(request.query_params.multi_items()),
        now=services.clock(),
        publishing=_publishing(services),
    )
    return Response(text, media_type="text/csv; charset=utf-8")
