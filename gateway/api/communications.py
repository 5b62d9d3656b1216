"""Query threads: `POST /fhir/Communication` (the trust answers) and `GET /fhir/Communication?about=`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Security
from starlette.responses import Response

from auth.identity import Caller
from auth.scopes import PRESCRIPTION_ORDER_UPDATE, READ_TASKS
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from fhir_profiles.structure import require_resource
from gateway.api.deps import ServicesDep, authorise, for_caller
from gateway.api.documentation import query_parameters
from gateway.api.process_message import read_fhir_json_body
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_body, fhir_content, outcome_responses
from gateway.domain import provider_queries
from gateway.domain.search_parameters import refuse_undeclared

router = APIRouter(tags=["status"])

QueryAnswerer = Annotated[Caller, Security(authorise, scopes=[PRESCRIPTION_ORDER_UPDATE])]
ThreadReader = Annotated[Caller, Security(authorise, scopes=[READ_TASKS])]


@router.post(
    "/fhir/Communication",
    summary="Answer a provider's query about a line item (about: Task/{id}); the item resumes",
    response_class=FhirResponse,
    status_code=201,
    responses={
        201: {"description": "The stored Communication", "content": fhir_content("FhirResource")},
        **outcome_responses(400, 401, 403, 404, 409, 413, 415),
    },
    openapi_extra=fhir_body("CommunicationAnswer"),
)
async def answer_query(request: Request, caller: QueryAnswerer, services: ServicesDep) -> Response:
    _, body = await read_fhir_json_body(request, services.settings.max_body_bytes)
    communication = require_resource(body, "Communication")
    resource = await for_caller(
        services,
        request,
        caller,
        provider_queries.answer_query,
        communication=communication,
    )
    return FhirResponse(
        resource, status_code=201, headers={"Location": f"/fhir/Communication/{resource['id']}"}
    )


@router.get(
    "/fhir/Communication",
    summary="The query thread of a line item: about=Task/{id}",
    response_class=FhirResponse,
    responses={
        200: {"description": "searchset Bundle", "content": fhir_content("FhirResource")},
        **outcome_responses(400, 401, 403, 404),
    },
    openapi_extra={"parameters": query_parameters(provider_queries.COMMUNICATION_SEARCH, required=["about"])},
)
async def query_thread(request: Request, caller: ThreadReader, services: ServicesDep) -> Response:
    refuse_undeclared(request.query_params.keys(), provider_queries.COMMUNICATION_SEARCH)
    about = request.query_params.get("about", "")
    if not about.startswith("Task/") or about.count("/") != 1:
        raise OperationOutcomeError(
            400, [Issue(IssueType.REQUIRED, ErrorCode.MISSING_FIELD, "Search with about=Task/{id}", "about")]
        )
    bundle = await for_caller(
        services,
        request,
        caller,
        provider_queries.query_thread,
        item_id=about.removeprefix("Task/"),
    )
    return FhirResponse(bundle)
