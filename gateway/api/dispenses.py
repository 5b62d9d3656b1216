"""`MedicationDispense` reads: the dispenses providers sent in dispense-notifications."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.deps import ServicesDep, for_caller
from gateway.api.documentation import query_parameters
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.api.tasks import TaskReader
from gateway.domain import dispensing
from gateway.domain.search_parameters import refuse_undeclared

router = APIRouter(tags=["status"])

_READ_RESPONSES = {
    200: {"description": "The Task as the gateway now holds it", "content": fhir_content("FhirResource")},
    **outcome_responses(401, 403, 404),
}
_SEARCH_RESPONSES = {
    200: {"description": "searchset Bundle", "content": fhir_content("FhirResource")},
    **outcome_responses(400, 401, 403, 413, 415),
}


@router.get(
    "/fhir/MedicationDispense/{id}",
    summary="Read a MedicationDispense a provider sent in a dispense-notification",
    response_class=FhirResponse,
    responses=_READ_RESPONSES,
)
async def read_dispense(id: str, request: Request, caller: TaskReader, services: ServicesDep) -> Response:
    resource = await for_caller(
        services,
        request,
        caller,
        dispensing.read_dispense,
        dispense_id=id,
    )
    return FhirResponse(resource)


@router.get(
    "/fhir/MedicationDispense",
    summary="The MedicationDispenses of a line item: prescription=MedicationRequest/{id}",
    response_class=FhirResponse,
    responses=_SEARCH_RESPONSES,
    openapi_extra={"parameters": query_parameters(dispensing.DISPENSE_SEARCH, required=["prescription"])},
)
async def search_dispenses(request: Request, caller: TaskReader, services: ServicesDep) -> Response:
    refuse_undeclared(request.query_params.keys(), dispensing.DISPENSE_SEARCH)
    prescription = request.query_params.get("prescription", "")
    if not prescription.startswith("MedicationRequest/") or prescription.count("/") != 1:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.REQUIRED,
                    ErrorCode.MISSING_FIELD,
                    "Search with prescription=MedicationRequest/{id}",
                    "prescription",
                )
            ],
        )
    bundle = await for_caller(
        services,
        request,
        caller,
        dispensing.dispenses_of_item,
        item_id=prescription.removeprefix("MedicationRequest/"),
    )
    return FhirResponse(bundle)
