"""What the OpenAPI document says beyond the routes' own declarations: search parameters from their
declarations, the bearer-token scheme for "Try it out", examples of each request and answer, and no
response the API never sends (FastAPI's default 422: request validation answers 400 here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fhir_profiles.outcome import OperationOutcomeError, operation_outcome, success_outcome
from gateway.api.throttle import TOKEN_THROTTLED_ERROR
from gateway.domain.access import missing_scope_error
from gateway.domain.reads import not_found
from gateway.domain.search_parameters import SearchParameter

_NUMBER = {"type": "integer", "minimum": 1, "maximum": 200}


def query_parameters(
    parameters: Iterable[SearchParameter], *, required: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """OpenAPI query parameters of a search: every declared one a URL may carry."""
    needed = set(required)
    return [
        {
            "name": p.name,
            "in": "query",
            "required": p.name in needed,
            "description": p.documentation,
            "schema": _NUMBER if p.type == "number" else {"type": "string"},
            **({"example": int(p.example) if p.type == "number" else p.example} if p.example else {}),
        }
        for p in parameters
        if not p.post_only
    ]


def form_body(parameters: Iterable[SearchParameter]) -> dict[str, Any]:
    """An OpenAPI request body of search parameters as a form (`POST _search`)."""
    declared = list(parameters)
    return {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        p.name: {"type": "string", "description": p.documentation} for p in declared
                    },
                    "additionalProperties": False,
                },
                "example": {p.name: p.example for p in declared if p.post_only},
            }
        }
    }


BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "An access token from POST /auth/token, pasted as it is (Authorize, then Try it out). "
    "Get one with `homecare-gateway token --token-only --client-id ID --key KEY.pem --token-url "
    "https://<gateway>/auth/token`. Each operation's scopes are listed under smart-backend-services.",
}


def _refusal_of(action: Callable[[str], object], argument: str) -> dict[str, Any]:
    """The OperationOutcome `action(argument)` refuses with."""
    try:
        action(argument)
    except OperationOutcomeError as refusal:
        return operation_outcome(refusal.issues)
    raise AssertionError(f"{argument!r} was not refused")


def _examples() -> dict[tuple[str, str], dict[int | str, Any]]:
    """Per operation: `request` the request body's example(s), and an answer per status."""
    from gateway.api import examples as ex
    from gateway.api.metadata import capability_statement
    from gateway.kpi import publication

    search = ex.searchset(ex.TASK, self_url=f"{ex.BASE}/fhir/Task?owner=VNCEL")
    message_requests = Several(
        {
            "prescription-order": ex.ORDER,
            "prescription-order-update (cancel)": ex.CANCELLATION,
        }
    )
    oauth_400 = {
        "error": "invalid_scope",
        "error_description": "system/MedicationDispense.c is beyond the client's scopes",
    }
    oauth_401 = {"error": "invalid_client", "error_description": "The client assertion has expired"}
    oauth_429 = {
        "error": TOKEN_THROTTLED_ERROR,
        "error_description": "too many token requests from this client: retry after 30 seconds",
    }
    return {
        ("post", "/auth/token"): {
            "request": ex.TOKEN_FORM,
            200: ex.TOKEN,
            400: oauth_400,
            401: oauth_401,
            429: oauth_429,
        },
        ("get", "/.well-known/jwks.json"): {200: ex.JWKS},
        ("get", "/.well-known/smart-configuration"): {
            200: {
                "issuer": ex.BASE,
                "token_endpoint": f"{ex.BASE}/auth/token",
                "jwks_uri": f"{ex.BASE}/.well-known/jwks.json",
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": [
                    "RS512",
                    "RS384",
                    "ES384",
                    "RS256",
                    "ES256",
                ],
                "capabilities": ["client-confidential-asymmetric"],
            }
        },
        ("post", "/fhir/$process-message"): {
            "request": message_requests,
            200: ex.ACCEPTED,
            202: ex.CANCEL_WAITING,
            403: ex.SENDER_REFUSED,
        },
        ("post", "/fhir/Bundle/$validate"): {
            "request": message_requests,
            200: Several({"valid": ex.VALID, "not valid": ex.INVALID}),
            403: ex.SENDER_REFUSED,
        },
        ("post", "/fhir"): {"request": ex.TRANSACTION, 200: ex.TRANSACTION_RESPONSE, 409: ex.ILLEGAL_MOVE},
        ("post", "/fhir/Task"): {"request": ex.STATUS_REPORT, 200: ex.TASK, 409: ex.ILLEGAL_MOVE},
        ("put", "/fhir/Task/{id}"): {"request": ex.STATUS_REPORT, 200: ex.TASK, 409: ex.ILLEGAL_MOVE},
        ("get", "/fhir/Task/{id}"): {200: ex.TASK},
        ("get", "/fhir/Task/{id}/_history"): {200: ex.HISTORY},
        ("get", "/fhir/Task"): {200: search, 400: ex.SEARCH_REFUSED},
        ("post", "/fhir/Task/_search"): {200: search, 400: ex.SEARCH_REFUSED},
        ("get", "/fhir/Bundle/{id}"): {200: ex.ORDER, 404: ex.outcome(not_found("Bundle"))},
        ("get", "/fhir/MedicationRequest/{id}"): {200: ex.MEDICATION_REQUEST},
        ("get", "/fhir/MedicationDispense/{id}"): {
            200: ex.DISPENSE,
            404: ex.outcome(not_found("MedicationDispense")),
        },
        ("get", "/fhir/MedicationDispense"): {
            200: ex.searchset(ex.DISPENSE, self_url=f"{ex.BASE}/fhir/MedicationDispense")
        },
        ("post", "/fhir/Communication"): {"request": ex.QUESTION, 201: ex.ANSWER},
        ("get", "/fhir/Communication"): {
            200: ex.searchset(ex.ANSWER, self_url=f"{ex.BASE}/fhir/Communication")
        },
        ("post", "/fhir/Subscription"): {"request": ex.SUBSCRIPTION_REQUEST, 201: ex.SUBSCRIPTION},
        ("get", "/fhir/Subscription"): {
            200: ex.searchset(ex.SUBSCRIPTION, self_url=f"{ex.BASE}/fhir/Subscription")
        },
        ("get", "/fhir/Subscription/{id}"): {
            200: ex.SUBSCRIPTION,
            404: ex.outcome(not_found("Subscription")),
        },
        ("delete", "/fhir/Subscription/{id}"): {
            200: {**ex.SUBSCRIPTION, "status": "off"},
            404: ex.outcome(not_found("Subscription")),
        },
        ("get", "/fhir/metadata"): {200: capability_statement(ex.BASE)},
        ("get", "/fhir/CodeSystem/homecare-status"): {200: ex.codesystem()},
        ("get", "/fhir/Measure"): {200: publication.measures_bundle(ex.BASE)},
        ("get", "/fhir/Measure/{id}"): {
            200: publication.read_measure("on-time-delivery"),
            404: _refusal_of(publication.read_measure, "no-such-measure"),
        },
        ("get", "/fhir/MeasureReport"): {
            200: ex.searchset(
                {**ex.MEASURE_REPORT, "id": "on-time-delivery-VNCEL-2026-10"},
                self_url=f"{ex.BASE}/fhir/MeasureReport",
            )
        },
        ("get", "/fhir/Measure/{id}/$evaluate-measure"): {200: ex.MEASURE_REPORT},
        ("post", "/fhir/Measure/{id}/$evaluate-measure"): {
            "request": {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "periodStart", "valueDate": "2026-10-01"},
                    {"name": "periodEnd", "valueDate": "2026-10-31"},
                    {"name": "subject", "valueString": "VNCEL"},
                ],
            },
            200: ex.MEASURE_REPORT,
        },
        ("get", "/kpi/export.csv"): {
            200: "measure,provider,period,numerator,denominator,score\non-time-delivery,VNCEL,2026-10,114,120,0.95\n"
        },
        ("get", "/health"): {200: success_outcome("alive")},
        ("get", "/ready"): {200: success_outcome("ready")},
    }


def _scopes(operation: dict[str, Any]) -> list[str]:
    """The SMART scopes an operation needs, as its security requirement lists them."""
    return [
        scope
        for requirement in operation.get("security", [])
        for scope in requirement.get("smart-backend-services", [])
    ]


class Several(dict[str, Any]):
    """Named examples of one request or answer."""


def _set_example(content: dict[str, Any], example: Any) -> None:
    """`example`, or named `examples` when `Several` are given."""
    for media in content.values():
        if isinstance(example, Several):
            media["examples"] = {name: {"summary": name, "value": value} for name, value in example.items()}
        else:
            media["example"] = example


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """The document as published: no FastAPI 422, the bearer scheme beside SMART's, examples."""
    from gateway.api.examples import ERRORS, outcome

    components = document.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    components.setdefault("securitySchemes", {})["bearer"] = BEARER_SCHEME
    examples = _examples()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):
                del responses["422"]  # request validation answers 400 (gateway.api.errors)
            if "security" in operation:
                operation["security"] = [{"bearer": []}, *operation["security"]]
            mine = examples.get((method, path), {})
            body = operation.get("requestBody", {}).get("content")
            if body and "request" in mine:
                _set_example(body, mine["request"])
            for status, response in responses.items():
                content = response.get("content")
                if not content:
                    continue
                code = int(status)
                if code in mine:
                    _set_example(content, mine[code])
                elif code == 403 and _scopes(operation):
                    _set_example(content, outcome(missing_scope_error(_scopes(operation)[:1])))
                elif code in ERRORS and "OperationOutcome" in str(content):
                    _set_example(content, ERRORS[code])
    return document
