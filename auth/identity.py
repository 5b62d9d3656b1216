"""The authenticated caller, as every route and service sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from auth.scopes import covers


class Role(StrEnum):
    """What kind of organisation a caller acts for; tenancy (auth.tenancy) follows from it."""

    TRUST = "trust"
    PROVIDER = "provider"
    CLINICIAN_APP = "clinician-app"
    # A person signed in to the web pages (a later issue): a member of one trust, like a clinician app.
    CLINICIAN = "clinician"


@dataclass(frozen=True, slots=True)
class Caller:
    """A machine client (or, later, a clinician user) acting for one organisation.

    `ods_code` is the organisation the caller acts for: the trust for trust systems, clinician apps
    and clinicians, the homecare provider for providers. `user_id` names the person behind a
    clinician app or web session (a staff identifier, never a patient's); None for machine calls.
    """

    client_id: str
    role: Role
    ods_code: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    user_id: str | None = None

    def may_act_for(self, ods_code: str) -> bool:
        return self.ods_code == ods_code

    def holds(self, needed_scope: str) -> bool:
        return covers(self.scopes, needed_scope)
