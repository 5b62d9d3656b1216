"""The dispatcher's doorbell: intake wakes it at once, except for a provider its breaker holds back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.clock import system_clock
from gateway.dispatch.settings import DispatcherSettings
from gateway.dispatch.worker import Dispatcher
from gateway.store.db import Database

SETTINGS = DispatcherSettings(poll_seconds=30, breaker_threshold=1, breaker_cooldown_seconds=60)


def dispatcher_with_vncel_down(tmp_path: Path) -> Dispatcher:
    dispatcher = Dispatcher(
        Database(f"sqlite:///{tmp_path / 'gateway.db'}"), clock=system_clock, settings=SETTINGS
    )
    dispatcher._breaker.record_failure("VNCEL")  # one failure trips it (threshold 1)
    return dispatcher


async def woken_by(dispatcher: Dispatcher, *rings: str | None) -> bool:
    """Whether the idle dispatcher wakes (to claim) within a second of these rings."""
    idle = asyncio.create_task(dispatcher._idle(asyncio.Event()))
    await asyncio.sleep(0.05)
    for provider in rings:
        dispatcher.doorbell.ring(provider)
    try:
        await asyncio.wait_for(asyncio.shield(idle), 1.0)
    except TimeoutError:
        idle.cancel()
        return False
    return True


def test_a_ring_for_a_provider_whose_breaker_is_open_lets_the_dispatcher_rest(tmp_path: Path) -> None:
    assert not asyncio.run(woken_by(dispatcher_with_vncel_down(tmp_path), "VNCEL", "VNCEL"))


def test_a_ring_for_a_healthy_provider_wakes_it_at_once(tmp_path: Path) -> None:
    assert asyncio.run(woken_by(dispatcher_with_vncel_down(tmp_path), "VNCEL", "RBA01"))


def test_a_ring_that_names_no_provider_wakes_it_at_once(tmp_path: Path) -> None:
    assert asyncio.run(woken_by(dispatcher_with_vncel_down(tmp_path), None))


def test_the_poll_interval_still_wakes_it_while_the_breaker_is_open(tmp_path: Path) -> None:
    dispatcher = Dispatcher(
        Database(f"sqlite:///{tmp_path / 'gateway.db'}"),
        clock=system_clock,
        settings=DispatcherSettings(poll_seconds=0.3, breaker_threshold=1, breaker_cooldown_seconds=60),
    )
    dispatcher._breaker.record_failure("VNCEL")
    assert asyncio.run(woken_by(dispatcher, "VNCEL"))
