"""The OpenAPI document as committed under `openapi/` (stable key order, trailing newline)."""

from __future__ import annotations

import json
import tempfile

from gateway.app import create_app
from gateway.settings import Settings


def render_openapi() -> str:
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(data_dir=data_dir))
        document = app.openapi()
        app.state.services.db.dispose()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
