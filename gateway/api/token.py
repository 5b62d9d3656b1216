"""`POST /auth/token` (client credentials with a private_key_jwt assertion) and the SMART discovery documents.

OAuth answers are RFC 6749 JSON (`{"error", "error_description"}`), not OperationOutcomes: that is
what OAuth client libraries read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from auth.assertion import ASSERTION_ALGORITHMS, ASSERTION_TYPE, MalformedAssertionError, read_assertion
from auth.scopes import SUPPORTED_SCOPES
from auth.tokens import OAuthError
from gateway.api.deps import ServicesDep
from gateway.api.throttle import TOKEN_THROTTLED_ERROR, token_throttled

router = APIRouter(tags=["authorisation"])

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FORM_BYTES = 32_768
_FORM = "application/x-www-form-urlencoded"


async def read_token_form(request: Request) -> dict[str, str]:
    """The form parameters, each at most once (RFC 6749 section 3.2), or invalid_request."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != _FORM:
        raise OAuthError("invalid_request", f"send the parameters as {_FORM}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "the request is too large")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=16
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "the form body cannot be parsed") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"parameter '{name}' is repeated")
        form[name] = value
    return form


_TOKEN_RESPONSE = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["bearer"]},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
}
_OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "string",
            "enum": [
                "invalid_request",
                "invalid_client",
                "invalid_scope",
                "unsupported_grant_type",
                TOKEN_THROTTLED_ERROR,
            ],
        },
        "error_description": {"type": "string"},
    },
}


@router.post(
    "/auth/token",
    summary="Get an access token: client credentials with a signed JWT client assertion",
    responses={
        200: {"description": "An access token", "content": {"application/json": {"schema": _TOKEN_RESPONSE}}},
        400: {
            "description": "invalid_request, unsupported_grant_type or invalid_scope",
            "content": {"application/json": {"schema": _OAUTH_ERROR}},
        },
        401: {
            "description": "invalid_client: the assertion does not prove the client's identity",
            "content": {"application/json": {"schema": _OAUTH_ERROR}},
        },
        429: {
            "description": f"{TOKEN_THROTTLED_ERROR}: too many requests from this address or client; "
            "see Retry-After",
            "content": {"application/json": {"schema": _OAUTH_ERROR}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                _FORM: {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type", "client_assertion_type", "client_assertion"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": ["client_credentials"]},
                            "client_assertion_type": {"type": "string", "enum": [ASSERTION_TYPE]},
                            "client_assertion": {"type": "string"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request, services: ServicesDep) -> Response:
    state = request.scope["state"]
    try:
        form = await read_token_form(request)
    except OAuthError as refusal:
        await run_in_threadpool(services.tokens.record_refusal, refusal, state["request_id"])
        raise
    # The per-client limit counts tokens issued, so only a client that proved who it is uses up its
    # own allowance; a client already over it is refused before any work is done.
    limit = services.limits.token_per_client
    claimed = _claimed_client(form)
    wait = limit.exhausted(claimed) if claimed else None
    if wait is None:
        issued = await run_in_threadpool(services.tokens.issue, form, request_id=state["request_id"])
        wait = limit.hit(issued.client_id)
        if wait is None:
            return JSONResponse(issued.body(), headers=_NO_STORE)
        claimed = issued.client_id
    state["refusal_reason"] = "client-rate-limit"
    state["client_id"] = claimed
    return token_throttled(wait, "client")


def _claimed_client(form: dict[str, str]) -> str | None:
    """The client an assertion claims to come from (not verified: used only to refuse early)."""
    try:
        return read_assertion(form.get("client_assertion", "")).issuer
    except MalformedAssertionError:
        return None


@router.get("/.well-known/smart-configuration", summary="SMART Backend Services discovery")
async def smart_configuration(services: ServicesDep) -> dict[str, Any]:
    base = services.settings.base_url
    return {
        "issuer": base,
        "token_endpoint": services.settings.token_url,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": list(SUPPORTED_SCOPES),
        "capabilities": ["client-confidential-asymmetric"],
    }


@router.get("/.well-known/jwks.json", summary="The public keys that verify the gateway's access tokens")
async def jwks(services: ServicesDep) -> dict[str, Any]:
    return services.tokens.signing_keys.jwks()
