"""The gateway's background side in a thread, as `homecare-gateway worker` runs it: dispatcher, expiry,
the unpulled-order check, the MLLP listener and the status-folder pollers, on the test's database.
Together with the session's API server it is the whole gateway the adapters talk to."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.clock import Clock, system_clock
from gateway.runner import Runtime
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import update_provider

FAST_WORKER: dict[str, Any] = {
    "dispatch_poll_seconds": 0.02,
    "dispatch_lease_seconds": 5.0,
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.3,
    "retry_max_attempts": 200,
    "breaker_threshold": 1000,
    "mllp_listen": "127.0.0.1:0",
    "poll_status_folders": True,
    "status_sources_refresh_seconds": 0.1,
    "pull_check_seconds": 0.1,
    "provider_cache_seconds": 0,
    "audit_seal_seconds": 0,
}


@contextmanager
def running_gateway(
    db: Database, settings: Settings, *, clock: Clock = system_clock, **overrides: Any
) -> Iterator[Runtime]:
    """A runtime (`Runtime.running(dispatch=True)`) in a thread of its own until the block ends."""
    runtime = Runtime.create(settings.model_copy(update={**FAST_WORKER, **overrides}), db=db, clock=clock)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: list[asyncio.Event] = []
    failure: list[BaseException] = []

    async def main() -> None:
        try:
            async with runtime.running(dispatch=True) as stopping:
                stop.append(stopping)
                started.set()
                await stopping.wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()
            raise

    thread = threading.Thread(
        target=lambda: loop.run_until_complete(main()), name="test-runtime", daemon=True
    )
    thread.start()
    started.wait(timeout=30)
    if failure:
        thread.join(timeout=10)
        raise failure[0]
    try:
        yield runtime
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=30)
        loop.close()


def use_adapter(db: Database, ods: str, adapter: str, settings: dict[str, Any]) -> None:
    """Register `ods` (a test provider, registered with no settings) with `adapter` and `settings`."""
    with db.write() as session:
        update_provider(session, ods, now=system_clock(), adapter=adapter, settings=settings, enabled=True)
