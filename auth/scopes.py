"""SMART v2 system scopes: what each endpoint and message event needs, and what each role may hold.

A scope is `system/<Resource>.<permissions>` with permissions a subset of `cruds` in that order
(`system/Task.rs`: read and search Tasks). A granted scope covers a needed one when the resource
matches (or is granted as `*`) and every needed permission is granted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_SCOPE = re.compile(r"system/(?P<resource>\*|[A-Z][A-Za-z]{1,63})\.(?P<permissions>c?r?u?d?s?)")


class ScopeError(ValueError):
    """A scope string that is not a SMART v2 system scope."""


@dataclass(frozen=True, slots=True)
class Scope:
    resource: str
    permissions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope:
        return _parse(text)

    def covers(self, needed: Scope) -> bool:
        return self.resource in ("*", needed.resource) and needed.permissions <= self.permissions


@lru_cache(maxsize=256)
def _parse(text: str) -> Scope:
    match = _SCOPE.fullmatch(text)
    if match is None or not match["permissions"]:
        raise ScopeError(f"'{text}' is not a SMART v2 system scope (system/Resource.cruds)")
    return Scope(match["resource"], frozenset(match["permissions"]))


def parse_scopes(text: str) -> list[str]:
    """A space-separated scope list, each checked; duplicates dropped, order kept."""
    scopes = list(dict.fromkeys(text.split()))
    for scope in scopes:
        Scope.parse(scope)
    return scopes


def covers(granted: Iterable[str], needed: str) -> bool:
    """Whether any granted scope covers the needed one (granted scopes are already valid)."""
    wanted = Scope.parse(needed)
    return any(Scope.parse(scope).covers(wanted) for scope in granted)


# What each endpoint or message needs (DESIGN.md section 10).
PRESCRIPTION_ORDER = "system/MedicationRequest.c"
PRESCRIPTION_ORDER_UPDATE = "system/MedicationRequest.u"
DISPENSE_NOTIFICATION = "system/MedicationDispense.c"
READ_PRESCRIPTION = "system/MedicationRequest.r"
SEARCH_PRESCRIPTIONS = "system/MedicationRequest.s"
READ_TASKS = "system/Task.rs"
UPDATE_TASKS = "system/Task.cu"
SUBSCRIPTIONS = "system/Subscription.crud"
CREATE_SUBSCRIPTION = "system/Subscription.c"
READ_SUBSCRIPTIONS = "system/Subscription.r"
DELETE_SUBSCRIPTION = "system/Subscription.d"

MESSAGE_EVENT_SCOPES: dict[str, str] = {
    "prescription-order": PRESCRIPTION_ORDER,
    "prescription-order-update": PRESCRIPTION_ORDER_UPDATE,
    "dispense-notification": DISPENSE_NOTIFICATION,
}

# The scopes clients are registered with and ask for, as the SMART configuration and OpenAPI list them.
SCOPE_DESCRIPTIONS: dict[str, str] = {
    "system/MedicationRequest.c": "Send prescription-order messages",
    "system/MedicationRequest.u": "Send prescription-order-update (cancel) messages",
    "system/MedicationRequest.rs": "Read and search prescriptions (MedicationRequest, the Bundle as sent)",
    "system/MedicationRequest.r": "Read prescriptions by id",
    "system/MedicationDispense.c": "Send dispense-notification messages",
    "system/Task.rs": "Read and search prescription status (Task)",
    "system/Task.cu": "Report status as a provider (Task)",
    "system/Subscription.crud": "Manage status subscriptions",
}
SUPPORTED_SCOPES: tuple[str, ...] = tuple(SCOPE_DESCRIPTIONS)

# The most each role (auth.identity.Role) may be granted: a provider never orders, a trust never
# dispenses.
ROLE_CEILINGS: dict[str, tuple[str, ...]] = {
    "trust": (
        "system/MedicationRequest.crus",
        "system/Task.rs",
        "system/Subscription.crud",
    ),
    "provider": (
        "system/MedicationRequest.rs",
        "system/MedicationDispense.c",
        "system/Task.crus",
    ),
    "clinician-app": (
        "system/MedicationRequest.rus",
        "system/Task.rs",
        "system/Subscription.crud",
    ),
}


def beyond_role(role: str, scopes: Iterable[str]) -> list[str]:
    """The scopes a client of this role may not hold."""
    ceiling = ROLE_CEILINGS.get(role, ())
    return [scope for scope in scopes if not covers(ceiling, scope)]
