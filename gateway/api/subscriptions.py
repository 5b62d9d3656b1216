"""`/fhir/Subscription`: a trust subscribes (rest-hook) to the status of its own prescriptions.

Thin routes: the rules are in `gateway.notify`. Creating needs `system/Subscription.c`, reading and
listing `system/Subscription.r`, deleting (turning off) `system/Subscription.d`; a trust client is
registered with `system/Subscription.crud`, which holds all three.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Security
from starlette.responses import Response

from auth.identity import Caller
from auth.scopes import CREATE_SUBSCRIPTION, DELETE_SUBSCRIPTION, READ_SUBSCRIPTIONS
from fhir_profiles.outcome import OperationOutcomeError
from gateway.api.deps import ServicesDep, authorise, for_caller
from gateway.api.process_message import read_fhir_json_body
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content, outcome_responses
from gateway.domain.search_parameters import refuse_undeclared
from gateway.notify import service
from gateway.notify.endpoints import EndpointPolicy

router = APIRouter(tags=["subscriptions"])

SubscriptionCreator = Annotated[Caller, Security(authorise, scopes=[CREATE_SUBSCRIPTION])]
SubscriptionReader = Annotated[Caller, Security(authorise, scopes=[READ_SUBSCRIPTIONS])]
SubscriptionDeleter = Annotated[Caller, Security(authorise, scopes=[DELETE_SUBSCRIPTION])]


@router.post(
    "/fhir/Subscription",
    summary="Subscribe to status changes of the trust's own prescriptions (rest-hook)",
    description="Criteria: `Task`, `Task?owner=ODS`, `Task?business-status=code[,code]`, or both with `&`. "
    "Notifications are POSTed to `channel.endpoint` (https), signed with a detached JWS in `X-Signature` "
    "that verifies with /.well-known/jwks.json. Only trust systems subscribe.",
    status_code=201,
    response_class=FhirResponse,
    responses={
        201: {"description": "The stored Subscription, active", "content": fhir_content("Subscription")},
        **outcome_responses(400, 401, 403, 413, 415, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {"schema": {"$ref": "#/components/schemas/SubscriptionRequest"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/SubscriptionRequest"}},
            },
        }
    },
)
async def create_subscription(
    request: Request, caller: SubscriptionCreator, services: ServicesDep
) -> Response:
    try:
        _, document = await read_fhir_json_body(request, services.settings.max_body_bytes)
    except OperationOutcomeError as refusal:
        await for_caller(services, request, caller, service.record_refused_create, status=refusal.status_code)
        raise
    created = await for_caller(
        services,
        request,
        caller,
        service.create_subscription,
        document=document,
        endpoints=EndpointPolicy(
            allow_loopback=services.settings.allow_loopback_subscribers, resolver=services.endpoint_resolver
        ),
        max_per_tenant=services.settings.max_subscriptions_per_tenant,
    )
    return FhirResponse(created.resource, status_code=201, headers={"Location": created.location})


@router.get(
    "/fhir/Subscription",
    summary="The trust's subscriptions, in every status",
    response_class=FhirResponse,
    responses={
        200: {"description": "A searchset Bundle of Subscriptions", "content": fhir_content("FhirResource")},
        **outcome_responses(400, 401, 403),
    },
)
async def search_subscriptions(
    request: Request, caller: SubscriptionReader, services: ServicesDep
) -> Response:
    refuse_undeclared(request.query_params.keys(), service.SUBSCRIPTION_SEARCH)
    bundle = await for_caller(
        services,
        request,
        caller,
        service.search_subscriptions,
        base_url=services.settings.base_url,
    )
    return FhirResponse(bundle)


@router.get(
    "/fhir/Subscription/{id}",
    summary="Read one of the trust's subscriptions: its status, and the error when deliveries failed",
    response_class=FhirResponse,
    responses={
        200: {"description": "The Subscription", "content": fhir_content("Subscription")},
        **outcome_responses(401, 403, 404),
    },
)
async def read_subscription(
    id: str, request: Request, caller: SubscriptionReader, services: ServicesDep
) -> Response:
    resource = await for_caller(
        services,
        request,
        caller,
        service.read_subscription,
        subscription_id=id,
    )
    return FhirResponse(resource)


@router.delete(
    "/fhir/Subscription/{id}",
    summary="Turn a subscription off: nothing more is sent, and queued notifications are dropped",
    response_class=FhirResponse,
    responses={
        200: {"description": "The Subscription, now off", "content": fhir_content("Subscription")},
        **outcome_responses(401, 403, 404),
    },
)
async def delete_subscription(
    id: str, request: Request, caller: SubscriptionDeleter, services: ServicesDep
) -> Response:
    resource = await for_caller(
        services,
        request,
        caller,
        service.delete_subscription,
        subscription_id=id,
    )
    return FhirResponse(resource)
