"""Dependencies shared by routes: the services the app was built with, and the caller's identity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Security
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.security import OAuth2, SecurityScopes
from starlette.concurrency import run_in_threadpool

from auth.identity import Caller
from auth.scopes import SCOPE_DESCRIPTIONS, Scope
from auth.tokens import InvalidAccessTokenError, TokenService
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.throttle import RateLimits, api_throttled
from gateway.clock import Clock
from gateway.domain import access
from gateway.domain.context import Context
from gateway.domain.refusals import RefusalLog
from gateway.notify.endpoints import Resolver, system_resolver
from gateway.settings import Settings
from gateway.store.db import Database


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes were built with: the settings, the domain's context and the token service."""

    settings: Settings
    context: Context
    tokens: TokenService
    limits: RateLimits
    refusals: RefusalLog
    # Where subscriber endpoints' names are looked up (tests give a StaticResolver).
    endpoint_resolver: Resolver = system_resolver

    @property
    def db(self) -> Database:
        return self.context.db

    @property
    def clock(self) -> Clock:
        return self.context.clock


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

T = TypeVar("T")


def request_id(request: Request) -> str:
    """The id the request middleware gave this request (echoed as X-Request-ID, written to the audit)."""
    return str(request.scope["state"]["request_id"])


async def for_caller(
    services: Services, request: Request, caller: Caller, action: Callable[..., T], /, **arguments: Any
) -> T:
    """Run a domain action for the caller in a worker thread, with the context and the request id."""
    return await run_for(services, caller, request_id(request), action, **arguments)


async def run_for(
    services: Services, caller: Caller, request_id: str, action: Callable[..., T], /, **arguments: Any
) -> T:
    """Run a domain action (its first argument the context) for the caller, in a worker thread."""
    return await run_in_threadpool(
        partial(action, services.context, caller=caller, request_id=request_id, **arguments)
    )


# SMART Backend Services, as OpenAPI describes it: each route lists the scopes it needs.
smart_backend_services = OAuth2(
    flows=OAuthFlows(
        clientCredentials=OAuthFlowClientCredentials(tokenUrl="/auth/token", scopes=SCOPE_DESCRIPTIONS)
    ),
    scheme_name="smart-backend-services",
    description="Client credentials with a private_key_jwt client assertion "
    "(see /.well-known/smart-configuration)",
    auto_error=False,
)


def _unauthenticated(diagnostics: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        401,
        [Issue(IssueType.LOGIN, ErrorCode.ACCESS_DENIED, diagnostics)],
        headers={"WWW-Authenticate": 'Bearer realm="homecare-gateway", error="invalid_token"'},
    )


async def authorise(
    security_scopes: SecurityScopes,
    request: Request,
    authorization: Annotated[str | None, Depends(smart_backend_services)],
) -> Caller:
    """The caller behind the bearer access token, holding every scope the route needs; else 401/403."""
    # The services straight from the app, not as a dependency: every sub-dependency costs each request.
    services: Services = request.app.state.services
    return authenticate(services, request, authorization, security_scopes.scopes)


def authenticate(
    services: Services, request: Request, authorization: str | None, required: Sequence[str] = ()
) -> Caller:
    """`authorise` without FastAPI: the caller behind `authorization` (the Authorization header), counted
    against its rate limit, holding every scope in `required`; else the 401, 403 or 429 to answer."""
    state = request.scope["state"]
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # The request middleware audits the refusal (coalesced), under this reason.
        state["refusal_reason"] = "no-bearer-token"
        raise _unauthenticated("A bearer access token is required (Authorization: Bearer ...)")
    try:
        caller = services.tokens.caller_for(token.strip())
    except InvalidAccessTokenError as exc:
        state["refusal_reason"] = "invalid-token"
        raise _unauthenticated(f"The access token is not valid: {exc}") from exc
    state["client_id"] = caller.client_id
    state["caller"] = caller
    if not state.get("client_counted"):
        state["client_counted"] = True
        wait = services.limits.api_per_client.hit(caller.client_id)
        if wait is not None:
            state["refusal_reason"] = "client-rate-limit"
            raise api_throttled(wait, "client")
    missing = [scope for scope in required if not caller.holds(scope)]
    if missing:
        # Audited by the request middleware (coalesced, as floods of refusals are).
        action, resource_type = access.missing_scope_audit(Scope.parse(missing[0]))
        state["refusal_reason"] = "insufficient_scope"
        state["refusal_audit"] = (action, resource_type, request.path_params.get("id"))
        raise access.missing_scope_error(missing)
    return caller


# Authenticated, with no scope of its own (the route checks what the request needs).
CurrentCaller = Annotated[Caller, Security(authorise)]
