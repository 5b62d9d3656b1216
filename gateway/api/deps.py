"""Dependencies shared by routes: the services the app was built with, and the caller's identity."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from auth.identity import Caller, Role
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.clock import Clock
from gateway.dispatch.worker import Doorbell
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import ProviderDirectory
from gateway.store.writer import BatchWriter


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    clock: Clock
    providers: ProviderDirectory
    writer: BatchWriter
    doorbell: Doorbell


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _unauthenticated(diagnostics: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        401,
        [Issue(IssueType.LOGIN, ErrorCode.ACCESS_DENIED, diagnostics)],
        headers={"WWW-Authenticate": 'Bearer realm="homecare-gateway"'},
    )


async def authenticate(request: Request, services: ServicesDep) -> Caller:
    """The caller behind the bearer token, or a 401 OperationOutcome."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthenticated("A bearer access token is required (Authorization: Bearer ...)")
    token = token.strip()
    dev_token = services.settings.dev_token
    if dev_token and hmac.compare_digest(token.encode(), dev_token.encode()):
        caller = Caller(client_id="development", role=Role.DEVELOPER, ods_code=None)
        request.scope["state"]["client_id"] = caller.client_id
        return caller
    raise _unauthenticated("The access token is not valid")


CurrentCaller = Annotated[Caller, Depends(authenticate)]
