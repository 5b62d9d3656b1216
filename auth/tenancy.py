"""Tenancy, in one place: which prescriptions a caller may see.

A trust (its systems, clinician apps and clinicians) sees the prescriptions it sent: those whose
tenant (`MessageHeader.sender` ODS) is its ODS code. A provider sees what was routed to it: those
whose provider ODS is its code. Anything else does not exist for the caller (404, never 403).
The same rule answers for one loaded prescription (`may_see`) and filters queries and searches
(`visible_filter`), so a search can never show what a read would refuse.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement

from auth.identity import Caller, Role

_TRUST_SIDE = frozenset({Role.TRUST, Role.CLINICIAN_APP, Role.CLINICIAN})


def _sees_by_tenant(caller: Caller) -> bool:
    if caller.role in _TRUST_SIDE:
        return True
    if caller.role is Role.PROVIDER:
        return False
    raise ValueError(f"no tenancy rule for role {caller.role!r}")


def may_see(caller: Caller, *, tenant_ods: str, provider_ods: str) -> bool:
    """Whether the caller may see a prescription sent by `tenant_ods` and routed to `provider_ods`."""
    return caller.ods_code == (tenant_ods if _sees_by_tenant(caller) else provider_ods)


def visible_filter(caller: Caller, *, tenant_column: Any, provider_column: Any) -> ColumnElement[bool]:
    """The SQL condition for the same rule, over the given prescription columns."""
    column = tenant_column if _sees_by_tenant(caller) else provider_column
    condition: ColumnElement[bool] = column == caller.ods_code
    return condition
