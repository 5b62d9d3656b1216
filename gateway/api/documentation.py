"""What the OpenAPI document says beyond the routes' own declarations: search parameters from their
declarations, the bearer-token scheme for "Try it out", examples of each request and answer, and no
response the API never sends (FastAPI's default 422: request validation answers 400 here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
