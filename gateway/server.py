"""Starting the gateway: migrate, make sure a signing key exists, run uvicorn."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import uvicorn

from auth.signing import SigningKeys, ensure_signing_key
from gateway.clock import system_clock
from gateway.fault_injection import install as install_test_fault
from gateway.logs import configure_logging, get_logger
from gateway.operator_errors import ensure_port_free
from gateway.runner import Runtime
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.transport import uvicorn_options

log = get_logger("gateway.server")


def prepare(settings: Settings) -> None:
    """Everything a start needs before the first request: the schema, and the gateway's signing key.

    In development the first key is generated into the data folder; in production the configured
    folder must already hold one (`homecare-gateway keys rotate` makes it), so that every process and
    machine signs with the same keys. A missing or unreadable key stops the start here.
    """
    configure_logging(level=settings.log_level, json=settings.log_json)
    if settings.allow_loopback_subscribers:
        log.warning(
            "loopback_subscribers_allowed",
            detail="HOMECARE_ALLOW_LOOPBACK_SUBSCRIBERS is on: subscriptions may post to this machine "
            "(127.0.0.0/8, ::1, plain http included). Development only.",
        )
    database = Database(settings.resolved_database_url, pool_size=1)
    database.migrate()
    database.dispose()
    if settings.is_development:
        ensure_signing_key(settings.resolved_signing_keys_dir, now=system_clock())
    SigningKeys(settings.resolved_signing_keys_dir)


def run_server(*, host: str, port: int, workers: int) -> None:
    settings = _with_public_url_for(Settings(), host, port)
    ensure_port_free(host, port)
    prepare(settings)
    log.info(
        "starting",
        host=host,
        port=port,
        workers=workers,
        environment=settings.environment.value,
        token_url=settings.token_url,
    )
    uvicorn.run(
        "gateway.asgi:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        server_header=False,
        **uvicorn_options(settings, by_name=True),
    )


def _with_public_url_for(settings: Settings, host: str, port: int) -> Settings:
    """Without a configured public URL the gateway is where it listens: `serve --port N` puts N in
    the token audience (set in the environment, which uvicorn's worker processes read too)."""
    if "public_base_url" in settings.model_fields_set:
        return settings
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host  # noqa: S104
    os.environ["HOMECARE_PUBLIC_BASE_URL"] = f"http://{shown}:{port}"
    return Settings()


def run_worker() -> None:
    """`homecare-gateway worker`: a dispatcher (and the audit sealer), stopped by SIGTERM or Ctrl-C."""
    settings = Settings()
    prepare(settings)
    install_test_fault(settings.test_fault)

    async def main() -> None:
        runtime = Runtime.create(replace_pool(settings), clock=system_clock)
        # As `serve` does (gateway.asgi): start-up's objects out of the cycle collector's walks.
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        async with runtime.running(dispatch=True) as stop:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        runtime.context.db.dispose()

    asyncio.run(main())


def replace_pool(settings: Settings) -> Settings:
    """A worker needs few connections: its sends wait on the network, not the database."""
    return settings.model_copy(update={"db_pool_size": 4})
