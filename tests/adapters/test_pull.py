"""The `pull` adapter and the polling provider, against the real gateway over real HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from adapters.base import SendOutcome
from adapters.fhir_rest.simulator import SimulatorServer
from adapters.pull.simulator import PullSimulator, PullSimulatorConfig
from adapters.registry import InvalidAdapterSettings, validate_settings
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.clock import system_clock
from gateway.store.db import Database
from gateway.store.providers import update_provider
from tests.adapters.support import adapter_for, order_for
from tests.support import TOKEN_URL, RunningServer, Tenant, access_token
from tests.test_lifecycle_e2e import running_dispatcher, send_order, statuses, wait_until


@contextmanager
def polling_provider(server: RunningServer, tenant: Tenant, **settings: object) -> Iterator[PullSimulator]:
    config = PullSimulatorConfig(
        ods=tenant.ods_code,
        gateway_url=server.base_url,
        token_audience=TOKEN_URL,
        client_id=tenant.client_id,
        kid=tenant.key.kid,
        algorithm=tenant.key.algorithm,
        poll_interval_seconds=0.05,
        step_delay_seconds=0.02,
        status_retry_seconds=0.05,
        **settings,
    )
    with PullSimulator(config, key=tenant.key.private) as simulator:  # type: ignore[arg-type]
        yield simulator


@pytest.mark.anyio
async def test_sending_to_a_pull_provider_holds_the_order_and_touches_nothing(
    builder: PrescriptionMessageBuilder,
) -> None:
    async with adapter_for("pull") as adapter:
        result = await adapter.send(order_for(builder.build()), idempotency_key="order-1")
        health = await adapter.check()
    assert result.outcome is SendOutcome.HELD and not result.is_delivered
    assert "held for VNCEL to pull" in result.detail
    assert health.ok


def test_pull_settings_are_validated() -> None:
    assert validate_settings("pull", {"lease_seconds": "60", "unpulled_alert_seconds": "600"})
    with pytest.raises(InvalidAdapterSettings, match="longer than lease_seconds"):
        validate_settings("pull", {"lease_seconds": 600, "unpulled_alert_seconds": 300})


def test_the_polling_provider_finds_its_queued_orders_with_its_signed_jwt(
    client: httpx.Client, server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    """The search, the reads and the acknowledgements all go through the gateway's own API as this
    provider's client (the gateway's side of pull is in tests/test_e2e_pull.py)."""
    _, items = send_order(client, items=2, seed=31)
    with polling_provider(server, tenants["provider-vncel"], down=True, max_delivery_attempts=1) as provider:
        assert provider.poll_once() == 1
        wait_until(lambda: len([u for u in provider.task_updates() if u.status == "accepted"]) == 2)
    (order,) = provider.orders()
    assert sorted(order.item_ids) == sorted(item_identifiers(client, items))
    accepted = [update for update in provider.task_updates() if update.status == "accepted"]
    assert sorted(update.task_id for update in accepted) == sorted(items)
    assert all(update.http_status is not None for update in accepted)


def item_identifiers(client: httpx.Client, items: list[str]) -> list[str]:
    return [client.get(f"/fhir/Task/{item}").json()["focus"]["identifier"]["value"] for item in items]


def test_another_providers_poller_sees_none_of_these_orders(
    client: httpx.Client, server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    send_order(client, items=1, seed=32)
    with polling_provider(server, tenants["provider-vnfkt"], down=True) as provider:
        assert provider.poll_once() == 0
    assert provider.orders() == []


def test_the_polling_provider_reports_the_whole_lifecycle_through_task_updates(
    client: httpx.Client, db: Database, server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    """The poller pulls whichever status it is told to (`search_status`): here orders pushed to a FHIR
    provider that only takes them (`sent`), and it reports every step of their lifecycle."""
    token: Callable[[], str] = lambda: access_token(server, tenants["provider-vncel"])  # noqa: E731
    with SimulatorServer("VNCEL", lifecycle=False, status_token_source=token) as pushed_to:
        with db.write() as session:
            update_provider(session, "VNCEL", now=system_clock(), settings={"base_url": pushed_to.base_url})
        with running_dispatcher(db):
            _, items = send_order(client, items=2, seed=33)
            wait_until(lambda: statuses(client, items) == ["sent", "sent"])
    with polling_provider(server, tenants["provider-vncel"], search_status="sent") as provider:
        wait_until(lambda: statuses(client, items) == ["delivered", "delivered"])
    updates = provider.task_updates()
    assert {update.http_status for update in updates} == {200}
    assert [u.status for u in updates if u.task_id == items[0]] == [
        "accepted",
        "in-preparation",
        "dispensed",
        "delivery-scheduled",
        "out-for-delivery",
        "delivered",
    ]
