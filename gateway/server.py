"""Starting the gateway: migrate, make sure a signing key exists, run uvicorn."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import threading
import time
from types import TracebackType

import uvicorn

from auth.signing import SigningKeys, ensure_signing_key
from gateway.api.metrics import admin_app
from gateway.clock import system_clock
from gateway.fault_injection import install as install_test_fault
from gateway.logs import configure_logging, get_logger
from gateway.operator_errors import OperatorError, ensure_port_free
from gateway.runner import Runtime, freeze_startup_objects
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


class AdminListener:
    """The operators' admin app (`/metrics`) on `HOMECARE_ADMIN_LISTEN`, in a thread of its own, for
    as long as the block runs; nothing when the setting is `off`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = settings.admin_address
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._db: Database | None = None

    @property
    def url(self) -> str | None:
        """Where it listens (the real port when the setting asked for port 0), once started."""
        if self._server is None or not self._server.servers:
            return None
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def __enter__(self) -> AdminListener:
        if self.address is None:
            return self
        host, port = self.address
        _ensure_admin_port_free(host, port)
        self._db = Database(self.settings.resolved_database_url, pool_size=1)
        config = uvicorn.Config(
            admin_app(self._db, system_clock, token=self.settings.metrics_token),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="admin-listener", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise OperatorError(
                    f"HOMECARE_ADMIN_LISTEN={self.settings.admin_listen}: cannot listen there"
                )
            time.sleep(0.01)
        log.info("admin_listener_started", url=self.url)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._db is not None:
            self._db.dispose()


def _ensure_admin_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            busy = (
                "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            )
            raise OperatorError(
                f"HOMECARE_ADMIN_LISTEN={host}:{port} {busy}: choose another with --admin-listen "
                "(a worker beside `serve` needs its own), or turn it off with --admin-listen off"
            ) from None


def _with_admin_listen(settings: Settings, admin_listen: str | None) -> Settings:
    if admin_listen is None:
        return settings
    return settings.model_copy(update={"admin_listen": admin_listen})


def run_server(*, host: str, port: int, workers: int, admin_listen: str | None = None) -> None:
    settings = _with_admin_listen(_with_public_url_for(Settings(), host, port), admin_listen)
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
    with AdminListener(settings):
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


def run_worker(*, admin_listen: str | None = None) -> None:
    """`homecare-gateway worker`: a dispatcher (and the audit sealer), stopped by SIGTERM or Ctrl-C."""
    settings = _with_admin_listen(Settings(), admin_listen)
    prepare(settings)
    install_test_fault(settings.test_fault)

    async def main() -> None:
        runtime = Runtime.create(replace_pool(settings), clock=system_clock)
        # As `serve` does: start-up's objects out of the cycle collector's walks.
        freeze_startup_objects()
        loop = asyncio.get_running_loop()
        async with runtime.running(dispatch=True) as stop:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        runtime.context.db.dispose()

    with AdminListener(settings):
        asyncio.run(main())


def replace_pool(settings: Settings) -> Settings:
    """A worker needs few connections: its sends wait on the network, not the database."""
    return settings.model_copy(update={"db_pool_size": 4})
