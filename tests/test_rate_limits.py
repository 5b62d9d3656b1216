"""Rate limits over real HTTP: per source address and per client, on the token endpoint (429, OAuth
error JSON, Retry-After) and on the API (429, OperationOutcome `throttled`, Retry-After); one client
or address over its limit leaves the others alone; throttled requests are audited. And the cap on
a trust's subscriptions."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from gateway.api.throttle import SWEEP_SECONDS, Limit, RateLimits, _SweptMemoryStorage
from gateway.store.db import Database
from tests import limits_support
from tests.limits_support import StartGateway, from_address, refusal_rows
from tests.support import RunningServer, Tenant, http_as, token_request
from tests.test_subscriptions import post, subscription

start_gateway = limits_support.start_gateway
# The counts live in process memory: one backend is enough for them (test_refusal_audit.py runs
# the audit rows on both; the subscription cap, a query, runs on both).
SQLITE_ONLY = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def assert_retry_after(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60


def assert_throttled_outcome(response: httpx.Response) -> None:
    assert_retry_after(response)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [issue["code"] for issue in body["issue"]] == ["throttled"]


def token_from(http: httpx.Client, tenant: Tenant) -> httpx.Response:
    return token_request(http, tenant.key.assertion(tenant.client_id))


@SQLITE_ONLY
def test_the_token_endpoint_limits_each_address(
    start_gateway: StartGateway, tenants: dict[str, Tenant], db: Database
) -> None:
    server = start_gateway(rate_limit_token_per_address="3/minute")
    rba = tenants["trust-rba"]
    with from_address(server, "127.0.0.1") as first, from_address(server, "127.0.0.2") as second:
        # Refused or not, every request from the address counts.
        assert token_request(first, "not-an-assertion").status_code == 400
        assert token_from(first, rba).status_code == 200
        assert token_from(first, rba).status_code == 200
        throttled = token_from(first, rba)
        assert_retry_after(throttled)
        assert throttled.headers["cache-control"] == "no-store"
        assert throttled.json()["error"] == "temporarily_unavailable"
        assert "access_token" not in throttled.json()
        # Another address is not affected.
        assert token_from(second, rba).status_code == 200
    rows = refusal_rows(db)
    assert [(row["source"], row["status"], row["reason"], row["route"]) for row in rows] == [
        ("127.0.0.1", 429, "address-rate-limit", "POST /auth/token")
    ]


@SQLITE_ONLY
def test_the_token_endpoint_limits_each_client_counting_only_its_own_tokens(
    start_gateway: StartGateway, tenants: dict[str, Tenant], db: Database
) -> None:
    server = start_gateway(rate_limit_token_per_client="2/minute")
    rba, rbb = tenants["trust-rba"], tenants["trust-rbb"]
    with from_address(server, "127.0.0.1") as http:
        # Assertions that claim to be RBA but are signed by another key do not use up RBA's tokens.
        impostor = rbb.key.assertion(rba.client_id)
        for _ in range(3):
            assert token_request(http, impostor).status_code == 401
        assert token_from(http, rba).status_code == 200
        assert token_from(http, rba).status_code == 200
        throttled = token_from(http, rba)
        assert_retry_after(throttled)
        assert throttled.json()["error"] == "temporarily_unavailable"
        assert token_from(http, rbb).status_code == 200
    rows = refusal_rows(db)
    assert [(row["client_id"], row["status"], row["reason"], row["route"]) for row in rows] == [
        ("trust-rba", 429, "client-rate-limit", "POST /auth/token")
    ]


@SQLITE_ONLY
def test_the_api_limits_each_client(
    start_gateway: StartGateway, tenants: dict[str, Tenant], db: Database
) -> None:
    server = start_gateway(rate_limit_api_per_client="3/minute")
    with http_as(server, tenants["trust-rba"]) as rba, http_as(server, tenants["trust-rbb"]) as rbb:
        for _ in range(3):
            assert rba.get("/fhir/Task").status_code == 200
        assert_throttled_outcome(rba.get("/fhir/Task"))
        assert_throttled_outcome(rba.get("/fhir/Subscription"))
        # The same address, another client: not affected.
        assert rbb.get("/fhir/Task").status_code == 200
    rows = refusal_rows(db)
    assert [(row["client_id"], row["outcome"], row["reason"], row["route"]) for row in rows] == [
        ("trust-rba", "throttled", "client-rate-limit", "GET /fhir/Task"),
        ("trust-rba", "throttled", "client-rate-limit", "GET /fhir/Subscription"),
    ]
    assert rows[0]["ods_code"] == "RBA" and rows[0]["source"] is None


@SQLITE_ONLY
def test_the_api_limits_each_address(
    start_gateway: StartGateway, tenants: dict[str, Tenant], db: Database
) -> None:
    server = start_gateway(rate_limit_api_per_address="3/minute")
    headers = {"Authorization": f"Bearer {bearer(server, tenants['trust-rba'])}"}
    with from_address(server, "127.0.0.1") as first, from_address(server, "127.0.0.2") as second:
        assert first.get("/fhir/Task").status_code == 401  # unauthenticated requests count too
        assert first.get("/fhir/Task", headers=headers).status_code == 200
        assert first.get("/fhir/Task/x", headers=headers).status_code == 404
        assert_throttled_outcome(first.get("/fhir/Task", headers=headers))
        # The same client from another address is not affected.
        assert second.get("/fhir/Task", headers=headers).status_code == 200
    throttled = [row for row in refusal_rows(db) if row["status"] == 429]
    assert [(row["source"], row["reason"], row["route"]) for row in throttled] == [
        ("127.0.0.1", "address-rate-limit", "GET /fhir/Task")
    ]


def bearer(server: RunningServer, tenant: Tenant) -> str:
    with http_as(server, tenant) as http:
        return str(http.headers["authorization"]).removeprefix("Bearer ")


def test_a_trust_may_hold_a_limited_number_of_subscriptions(
    start_gateway: StartGateway, tenants: dict[str, Tenant]
) -> None:
    server = start_gateway(max_subscriptions_per_tenant=2)
    with http_as(server, tenants["trust-rba"]) as rba, http_as(server, tenants["trust-rbb"]) as rbb:
        created = [post(rba, subscription()) for _ in range(2)]
        assert [response.status_code for response in created] == [201, 201]
        refused = post(rba, subscription())
        assert refused.status_code == 422
        issue: dict[str, Any] = refused.json()["issue"][0]
        assert issue["code"] == "business-rule"
        assert "2 subscriptions" in issue["diagnostics"]
        assert "HOMECARE_MAX_SUBSCRIPTIONS_PER_TENANT" in issue["diagnostics"]
        # Another trust has its own allowance; one turned off frees a place.
        assert post(rbb, subscription()).status_code == 201
        assert rba.delete(created[0].headers["location"]).status_code in (200, 204)
        assert post(rba, subscription()).status_code == 201


@pytest.mark.parametrize("spec", ["600/minute", "50/second", "10 per 2 seconds", "none"])
def test_a_limit_setting_is_a_limits_string_or_none(spec: str) -> None:
    from gateway.settings import Settings

    assert Settings(rate_limit_api_per_client=spec).rate_limit_api_per_client == spec


def test_a_bad_limit_setting_is_refused_naming_the_form() -> None:
    from pydantic import ValidationError

    from gateway.settings import Settings

    with pytest.raises(ValidationError, match="600/minute"):
        Settings(rate_limit_token_per_client="lots")


def test_counting_a_request_starts_no_thread() -> None:
    """The limits library's memory storage would start a timer thread 10 ms after a hit, a new one
    about a hundred times a second under load, each competing with the event loop."""
    from gateway.settings import Settings

    limits = RateLimits(Settings(rate_limit_api_per_address="100000/minute"))
    time.sleep(0.05)  # the storage's first timer, started with it, has ended
    before = threading.active_count()
    seen = set()
    for index in range(200):
        assert limits.api_per_address.hit(f"192.0.2.{index % 50}") is None
        seen.add(threading.active_count())
        time.sleep(0.0005)
    assert seen == {before}


def test_the_counts_of_callers_who_stopped_are_dropped() -> None:
    """Swept inline once their window has passed: memory stays bounded without a timer thread."""
    storage = _SweptMemoryStorage()
    limit = Limit("5/second", name="api-address", storage=storage)
    for index in range(100):
        assert limit.hit(f"198.51.100.{index}") is None
    assert len(storage.storage) == 100
    time.sleep(SWEEP_SECONDS + 0.1)
    assert limit.hit("203.0.113.1") is None
    assert list(storage.storage) == ["LIMITER/api-address/203.0.113.1/5/1/second"]
    # Within a window nothing is swept early, and a caller over its limit stays refused.
    for _ in range(5):
        limit.hit("203.0.113.1")
    assert limit.hit("203.0.113.1") is not None
