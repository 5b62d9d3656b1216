"""Reading back what was stored: `GET /fhir/MedicationRequest/{id}` and `GET /fhir/Bundle/{id}`."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from auth.identity import Caller
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.deps import CurrentCaller, ServicesDep
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.store import prescriptions as store
from gateway.store.db import Database

router = APIRouter(tags=["read"])


def not_found(resource_type: str) -> OperationOutcomeError:
    # The same answer for "absent" and "another organisation's": existence must not leak.
    return OperationOutcomeError(
        404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, f"No {resource_type} with this id")]
    )


def _medication_request(db: Database, item_id: str, caller: Caller) -> dict[str, Any]:
    with db.read() as session:
        found = store.get_item(session, item_id)
    if found is None or not caller.may_act_for(found[1].tenant_ods):
        raise not_found("MedicationRequest")
    item = found[0]
    resource: dict[str, Any] = orjson.loads(item.resource)
    resource["id"] = item.id
    resource["meta"] = {"lastUpdated": item.updated_at.isoformat()}
    return resource


def _bundle(db: Database, message_id: str, caller: Caller) -> bytes:
    with db.read() as session:
        found = store.get_message_body(session, message_id)
    if found is None or not caller.may_act_for(found[1]):
        raise not_found("Bundle")
    return found[0]


@router.get(
    "/fhir/MedicationRequest/{id}",
    summary="Read one line item as the trust sent it, with the gateway's id",
    response_class=FhirResponse,
    responses={
        200: {"description": "The MedicationRequest", "content": fhir_content("FhirResource")},
        **outcome_responses(401, 404),
    },
)
async def read_medication_request(id: str, caller: CurrentCaller, services: ServicesDep) -> Response:
    resource = await run_in_threadpool(_medication_request, services.db, id, caller)
    return FhirResponse(resource)


@router.get(
    "/fhir/Bundle/{id}",
    summary="Read an accepted message Bundle exactly as received (its bytes, so any signature stays valid)",
    response_class=FhirResponse,
    responses={
        200: {"description": "The Bundle as received", "content": fhir_content("FhirResource")},
        **outcome_responses(401, 404),
    },
)
async def read_bundle(id: str, caller: CurrentCaller, services: ServicesDep) -> Response:
    body = await run_in_threadpool(_bundle, services.db, id, caller)
    return FhirResponse(body)
