"""One logging setup: JSON lines through structlog, carrying the request and correlation ids.

Log lines name resources by the gateway's ids and codes only: never an NHS number, a name, a date of
birth, a request body or a query string. Libraries that log through the standard library (uvicorn,
SQLAlchemy) come out as the same JSON lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(*, level: str = "INFO", json: bool = True, cache_loggers: bool = False) -> None:
    """`cache_loggers`: each module's logger is built once, on its first line, not on every line
    (a server process configures once; tests that configure again leave it off)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps) if json else structlog.dev.ConsoleRenderer()
    )
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=cache_loggers,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # The gateway writes its own access line (without query strings); uvicorn's would repeat the URL.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request it makes with its full URL at INFO: a subscriber's endpoint may carry a
    # token in its query string. The dispatcher logs its sends itself, by id.
    logging.getLogger("httpx").setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
