"""FHIR JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

FHIR_JSON = "application/fhir+json"


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)
