"""`GET /fhir/CodeSystem/homecare-status`: the status codes the gateway publishes."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.domain.status import code_system

router = APIRouter(tags=["metadata"])


@router.get(
    "/fhir/CodeSystem/homecare-status",
    summary="The homecare status code system (Task.businessStatus)",
    response_class=FhirResponse,
    responses={
        200: {"description": "CodeSystem", "content": fhir_content("FhirResource")},
        **outcome_responses(404),
    },
)
async def homecare_status() -> Response:
    return FhirResponse(code_system())
