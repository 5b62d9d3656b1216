"""`GET /fhir/CodeSystem/homecare-status`: the status codes the gateway publishes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.domain.status import DEFINITIONS, STATUS_SYSTEM, TERMINAL, Status

router = APIRouter(tags=["metadata"])


def homecare_status_code_system() -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": "homecare-status",
        "url": STATUS_SYSTEM,
        "name": "HomecareStatus",
        "title": "Homecare prescription status",
        "status": "active",
        "content": "complete",
        "caseSensitive": True,
        "description": (
            "The business status of a homecare prescription line item, as the gateway tracks it "
            "(Task.businessStatus). Terminal codes end the item's lifecycle."
        ),
        "property": [{"code": "terminal", "type": "boolean", "description": "No further status follows"}],
        "concept": [
            {
                "code": status.value,
                "display": status.value.replace("-", " ").capitalize(),
                "definition": DEFINITIONS[status],
                "property": [{"code": "terminal", "valueBoolean": status in TERMINAL}],
            }
            for status in Status
        ],
    }


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
    return FhirResponse(homecare_status_code_system())
