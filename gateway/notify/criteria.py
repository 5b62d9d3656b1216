"""Subscription criteria: the FHIR search a trust subscribes to, and whether a status change matches it.

Supported, on the trust's own Tasks (one per line item) only:

    Task                                         every status change of the trust's prescriptions
    Task?owner=VNCEL                             routed to that provider (also `system|code` with the
                                                 ODS system, and `owner:identifier=...`)
    Task?business-status=dispensed,delivered     reaching one of those statuses (also `system|code`)
    Task?owner=VNCEL&business-status=delivered   both
    Task?business-status=run-out-risk            run-out warnings only (gateway.kpi.watch): not a
                                                 status of its own, the Task keeps its status

A run-out warning is offered as a change with the pseudo-status `run-out-risk`: every subscription
without a business-status criterion gets it (with its owner criterion), and those naming it.

A comma means "any of"; `&` and repeated parameters mean "all of", as in a FHIR search. Anything
else is refused when the subscription is created, naming the criterion, rather than never matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from fhir_profiles.codes import HOMECARE_STATUS_CODES, HOMECARE_STATUS_SYSTEM
from fhir_profiles.identifiers import ODS_SYSTEM, is_ods_code

RESOURCE_TYPE = "Task"
_OWNER_PARAMETERS = frozenset({"owner", "owner:identifier"})
_STATUS_PARAMETER = "business-status"
MAX_LENGTH = 500
# Not a homecare status: the warning that a patient may run out before the next supply (no status change).
RUN_OUT_RISK = "run-out-risk"


class CriteriaError(ValueError):
    """Criteria this gateway cannot honour; the message names the part that is wrong."""


@dataclass(frozen=True, slots=True)
class Criteria:
    """Parsed criteria: each entry is one parameter's allowed values; a change must satisfy them all."""

    owners: tuple[frozenset[str], ...] = ()
    statuses: tuple[frozenset[str], ...] = ()

    def matches(self, *, owner_ods: str, business_status: str) -> bool:
        return all(owner_ods in allowed for allowed in self.owners) and all(
            business_status in allowed for allowed in self.statuses
        )


def _values(parameter: str, raw: str) -> list[str]:
    values = raw.split(",")
    if any(not value for value in values):
        raise CriteriaError(f"'{parameter}' needs a value (comma-separated values may not be empty)")
    return values


def _owner(value: str) -> str:
    system, separator, code = value.rpartition("|")
    if separator and system != ODS_SYSTEM:
        raise CriteriaError(f"owner identifiers are ODS codes (system {ODS_SYSTEM}), not '{system[:100]}'")
    if not is_ods_code(code):
        raise CriteriaError(f"owner '{code[:20]}' is not an ODS code")
    return code


def _status(value: str) -> str:
    system, separator, code = value.rpartition("|")
    if separator and system not in ("", HOMECARE_STATUS_SYSTEM):
        raise CriteriaError(f"business-status codes are from {HOMECARE_STATUS_SYSTEM}, not '{system[:100]}'")
    if code not in HOMECARE_STATUS_CODES and code != RUN_OUT_RISK:
        raise CriteriaError(f"business-status '{code[:40]}' is not a homecare status code")
    return code


@lru_cache(maxsize=1024)
def parse_criteria(text: str) -> Criteria:
    """The criteria in `text`, or CriteriaError naming what is not supported."""
    if len(text) > MAX_LENGTH:
        raise CriteriaError(f"criteria longer than {MAX_LENGTH} characters are not supported")
    resource_type, question, query = text.partition("?")
    if resource_type != RESOURCE_TYPE:
        raise CriteriaError(
            f"only Task criteria are supported (the status of the trust's prescriptions), "
            f"not '{resource_type[:40]}'"
        )
    if not question:
        return Criteria()
    if not query:
        raise CriteriaError("'Task?' needs at least one search parameter after the '?'")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise CriteriaError(f"'{query[:100]}' is not a search query (name=value&...)") from exc
    owners: list[frozenset[str]] = []
    statuses: list[frozenset[str]] = []
    for parameter, raw in pairs:
        if parameter in _OWNER_PARAMETERS:
            owners.append(frozenset(_owner(value) for value in _values(parameter, raw)))
        elif parameter == _STATUS_PARAMETER:
            statuses.append(frozenset(_status(value) for value in _values(parameter, raw)))
        else:
            raise CriteriaError(
                f"search parameter '{parameter[:40]}' is not supported in criteria "
                "(supported: owner, business-status)"
            )
    return Criteria(owners=tuple(owners), statuses=tuple(statuses))
