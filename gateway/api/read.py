"""Reading back what was stored: `GET /fhir/MedicationRequest/{id}` and `GET /fhir/Bundle/{id}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Security
from starlette.responses import Response

from auth.identity import Caller
from auth.scopes import READ_PRESCRIPTION
from gateway.api.deps import ServicesDep, authorise, for_caller
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.domain import reads

router = APIRouter(tags=["read"])

# The Bundle is the prescription as sent: reading it needs the same scope as its MedicationRequests.
PrescriptionReader = Annotated[Caller, Security(authorise, scopes=[READ_PRESCRIPTION])]


@router.get(
    "/fhir/MedicationRequest/{id}",
    summary="Read one line item as the trust sent it, with the gateway's id",
    response_class=FhirResponse,
    responses={
        200: {"description": "The MedicationRequest", "content": fhir_content("FhirResource")},
        **outcome_responses(401, 403, 404),
    },
)
async def read_medication_request(
    id: str, request: Request, caller: PrescriptionReader, services: ServicesDep
) -> Response:
    resource = await for_caller(
        services,
        request,
        caller,
        reads.read_medication_request,
        item_id=id,
    )
    return FhirResponse(resource)


@router.get(
    "/fhir/Bundle/{id}",
    summary="Read an accepted message Bundle exactly as received (its bytes, so any signature stays valid)",
    response_class=FhirResponse,
    responses={
        200: {"description": "The Bundle as received", "content": fhir_content("FhirResource")},
        **outcome_responses(401, 403, 404),
    },
)
async def read_bundle(
    id: str, request: Request, caller: PrescriptionReader, services: ServicesDep
) -> Response:
    body = await for_caller(
        services,
        request,
        caller,
        reads.read_bundle,
        message_id=id,
    )
    return FhirResponse(body)
