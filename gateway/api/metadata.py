"""`GET /fhir/metadata`: a CapabilityStatement that says exactly what this gateway implements."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from gateway import __version__
from gateway.api.deps import ServicesDep
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_content
from gateway.domain.dispensing import DISPENSE_SEARCH
from gateway.domain.provider_queries import COMMUNICATION_SEARCH
from gateway.domain.search_parameters import capability_entries
from gateway.domain.task_reads import TASK_SEARCH
from gateway.notify.service import SUBSCRIPTION_SEARCH

router = APIRouter(tags=["metadata"])


def capability_statement(base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Homecare gateway project",
        "kind": "instance",
        "software": {"name": "homecare-gateway", "version": __version__},
        "implementation": {"description": "Homecare e-prescribing gateway", "url": f"{base_url}/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Trusts send homecare prescription-order and prescription-order-update (cancel) "
                    "messages with $process-message; providers send dispense-notification messages and "
                    "report each line item's status as a Task (one Task per line item)."
                ),
                "security": _SECURITY,
                # FHIR has no empty lists: a resource without search parameters has no searchParam.
                "resource": [{k: v for k, v in r.items() if v != []} for r in _resources()],
                "interaction": [{"code": "transaction", "documentation": "Up to 50 status Tasks"}],
                "operation": [
                    {
                        "name": "process-message",
                        "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                    },
                    {
                        "name": "validate",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                        "documentation": "POST /fhir/Bundle/$validate: checks a message as $process-message "
                        "would, storing nothing",
                    },
                ],
            }
        ],
        "messaging": _MESSAGING,
    }


_SECURITY: dict[str, Any] = {
    "service": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "OAuth",
                }
            ]
        }
    ],
    "description": "Bearer access token in the Authorization header.",
}


def _resources() -> list[dict[str, Any]]:
    return [
        {"type": "MedicationRequest", "interaction": [{"code": "read"}]},
        {"type": "Bundle", "interaction": [{"code": "read"}]},
        {
            "type": "Task",
            "interaction": [
                {"code": "read"},
                {"code": "search-type"},
                {"code": "create"},
                {"code": "update"},
                {"code": "history-instance"},
            ],
            "searchParam": capability_entries(TASK_SEARCH),
        },
        {
            "type": "MedicationDispense",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": capability_entries(DISPENSE_SEARCH),
        },
        {
            "type": "Communication",
            "interaction": [{"code": "create"}, {"code": "search-type"}],
            "searchParam": capability_entries(COMMUNICATION_SEARCH),
        },
        {"type": "CodeSystem", "interaction": [{"code": "read"}]},
        {
            "type": "Subscription",
            "documentation": (
                "rest-hook subscriptions of a trust to the status of its own prescriptions; "
                "criteria Task, with owner and business-status; notifications signed with a "
                "detached JWS (X-Signature) that verifies with /.well-known/jwks.json"
            ),
            "interaction": [
                {"code": "create"},
                {"code": "read"},
                {"code": "search-type"},
                {"code": "delete"},
            ],
            "searchParam": capability_entries(SUBSCRIPTION_SEARCH),
        },
    ]


_MESSAGING: list[dict[str, Any]] = [
    {
        "documentation": "EPS-shaped message Bundles; the homecare prescription types (12xx) only.",
        "supportedMessage": [
            {
                "mode": "receiver",
                "definition": f"https://fhir.nhs.uk/CodeSystem/message-event|{event}",
            }
            for event in ("prescription-order", "prescription-order-update", "dispense-notification")
        ],
    }
]


@router.get(
    "/fhir/metadata",
    summary="The CapabilityStatement of this gateway",
    response_class=FhirResponse,
    responses={200: {"description": "CapabilityStatement", "content": fhir_content("FhirResource")}},
)
async def metadata(services: ServicesDep) -> Response:
    return FhirResponse(capability_statement(services.settings.public_base_url.rstrip("/")))
