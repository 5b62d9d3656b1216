"""Starting the gateway: migrate, make sure a development token exists, run uvicorn."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import uvicorn

from gateway.logs import configure_logging, get_logger
from gateway.settings import Environment, Settings
from gateway.store.db import Database

log = get_logger("gateway.server")


def ensure_dev_token(settings: Settings) -> str | None:
    """In development, a bearer token kept in the data folder (owner-only); never in production."""
    if settings.environment is not Environment.DEVELOPMENT:
        return None
    if settings.dev_token:
        return settings.dev_token
    path = settings.data_dir / "dev-token"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    token = Path(path).read_text(encoding="utf-8").strip()
    os.environ["HOMECARE_DEV_TOKEN"] = token
    return token


def prepare(settings: Settings) -> str | None:
    """Everything a start needs before the first request: schema, and the development token."""
    configure_logging(level=settings.log_level, json=settings.log_json)
    database = Database(settings.resolved_database_url, pool_size=1)
    database.migrate()
    database.dispose()
    return ensure_dev_token(settings)


def run_server(*, host: str, port: int, workers: int) -> None:
    settings = Settings()
    token = prepare(settings)
    log.info("starting", host=host, port=port, workers=workers, environment=settings.environment.value)
    if token:
        print(f"Development token (Authorization: Bearer ...): {token}", flush=True)  # noqa: T201
    uvicorn.run(
        "gateway.asgi:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        server_header=False,
    )


def run_worker() -> None:
    """`homecare-gateway worker`: a dispatcher process, stopped cleanly by SIGTERM or Ctrl-C."""
    import asyncio
    import signal

    from gateway.clock import system_clock
    from gateway.dispatch.worker import Dispatcher

    settings = Settings()
    prepare(settings)

    async def main() -> None:
        database = Database(settings.resolved_database_url, pool_size=4)
        dispatcher = Dispatcher(database, clock=system_clock, settings=settings.dispatcher_settings())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await dispatcher.run(stop)
        finally:
            database.dispose()

    asyncio.run(main())
