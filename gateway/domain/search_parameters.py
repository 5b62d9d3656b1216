"""Search parameters, declared once: the search code reads them, the CapabilityStatement lists them
and the OpenAPI document describes them, all from these declarations.

A parameter not declared for a resource is refused (400, naming it), so what the gateway says it
supports and what it accepts are the same list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError


@dataclass(frozen=True, slots=True)
class SearchParameter:
    """One search parameter of a resource.

    `type` is the FHIR search parameter type; `example` a value that finds nothing in particular but
    is accepted; `post_only` keeps it out of URLs (the form body of `POST _search` only); `paging`
    marks the gateway's own page token (not a FHIR search parameter, so not in the
    CapabilityStatement). `read` is how the search code takes it in, where the search code has one
    reader per parameter."""

    name: str
    type: str
    documentation: str
    example: str
    read: Callable[[Any, str], None] | None = None
    post_only: bool = False
    paging: bool = False


def capability_entries(parameters: Iterable[SearchParameter]) -> list[dict[str, str]]:
    """`CapabilityStatement.rest.resource.searchParam` for these parameters."""
    return [
        {"name": p.name, "type": p.type, "documentation": p.documentation} for p in parameters if not p.paging
    ]


def refuse_undeclared(names: Iterable[str], parameters: Iterable[SearchParameter]) -> None:
    """400 naming every parameter that is not one of `parameters`."""
    declared = {p.name for p in parameters}
    unknown = sorted({name for name in names if name not in declared})
    if unknown:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.NOT_SUPPORTED,
                    ErrorCode.INVALID_VALUE,
                    f"Search parameter '{name[:64]}' is not supported; use " + ", ".join(sorted(declared)),
                    name[:64],
                )
                for name in unknown
            ],
        )
