"""The ASGI entry point for uvicorn workers: settings come from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.app import create_app
from gateway.logs import configure_logging
from gateway.runner import freeze_startup_objects
from gateway.settings import Settings


def app_from_environment() -> FastAPI:
    settings = Settings()
    configure_logging(level=settings.log_level, json=settings.log_json, cache_loggers=True)
    app = create_app(settings)
    freeze_startup_objects()
    return app
