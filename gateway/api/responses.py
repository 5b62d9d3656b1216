"""FHIR JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"


class FhirResponse(JSONResponse):
    """FHIR JSON; bytes are sent as they are (a stored Bundle goes out exactly as it came in)."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)
