"""The authenticated caller, as every route and service sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    TRUST = "trust"
    PROVIDER = "provider"
    CLINICIAN_APP = "clinician-app"
    DEVELOPER = "developer"


@dataclass(frozen=True, slots=True)
class Caller:
    """A machine client (or the development token) acting for one organisation.

    `ods_code` is the organisation the caller acts for; None only for the development token, which
    may act for any trust while the gateway runs in development mode.
    """

    client_id: str
    role: Role
    ods_code: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)

    def may_act_for(self, ods_code: str) -> bool:
        return self.ods_code is None or self.ods_code == ods_code
