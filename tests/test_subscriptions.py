"""`/fhir/Subscription` over real HTTP on both backends: create, read, list, turn off; every problem
as a 400 OperationOutcome with its element; scopes, roles and tenancy; the audit rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from auth.identity import Caller, Role
from auth.signing import ensure_signing_key
from fhir_profiles.outcome import OperationOutcomeError
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.domain.context import Context
from gateway.notify import service
from gateway.notify.criteria import CriteriaError, parse_criteria
from gateway.notify.endpoints import EndpointPolicy
from gateway.settings import Environment, Settings
from gateway.store.db import Database
from tests.support import (
    PUBLIC_BASE_URL,
    SUBSCRIBER_HOSTS,
    RunningServer,
    Tenant,
    http_as,
    with_test_resolver,
)

FHIR_JSON = {"Content-Type": "application/fhir+json"}
AsTenant = Callable[..., httpx.Client]
ENDPOINT = "https://ehr.rba.example.nhs.uk/homecare/notifications"


def subscription(**changes: Any) -> dict[str, Any]:
    """A valid Subscription request; keyword arguments replace (or, as None, remove) elements."""
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Homecare status for the pharmacy dashboard",
        "criteria": "Task?owner=VNCEL&business-status=dispensed,delivered",
        "channel": {
            "type": "rest-hook",
            "endpoint": ENDPOINT,
            "payload": "application/fhir+json",
            "header": ["Authorization: Bearer subscriber-secret-42"],
        },
    }
    for name, value in changes.items():
        if value is None:
            resource.pop(name, None)
        else:
            resource[name] = value
    return resource


def channel(**changes: Any) -> dict[str, Any]:
    base = dict(subscription()["channel"])
    for name, value in changes.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def post(http: httpx.Client, resource: Any) -> httpx.Response:
    return http.post("/fhir/Subscription", content=orjson.dumps(resource), headers=FHIR_JSON)


def issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return list(body["issue"])


def expressions(response: httpx.Response) -> set[str]:
    return {expression for issue in issues(response) for expression in issue.get("expression", [])}


def audit_rows(db: Database) -> list[tuple[str, str, str | None, int]]:
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT action, outcome, resource_id, status FROM audit_event "
                "WHERE resource_type = 'Subscription' ORDER BY id"
            )
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


# --- create, read, list, turn off ----------------------------------------------------------------


def test_a_trust_subscribes_reads_lists_and_turns_off_its_subscription(
    as_tenant: AsTenant, db: Database
) -> None:
    rba = as_tenant("trust-rba")
    created = post(rba, subscription())
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/fhir+json")
    stored = created.json()
    subscription_id = stored["id"]
    assert created.headers["location"] == f"/fhir/Subscription/{subscription_id}"
    assert stored["status"] == "active"
    assert stored["criteria"] == "Task?owner=VNCEL&business-status=dispensed,delivered"
    assert stored["channel"] == {
        "type": "rest-hook",
        "endpoint": ENDPOINT,
        "payload": "application/fhir+json",
        "header": ["Authorization: [redacted]"],
    }
    assert "subscriber-secret-42" not in created.text, "a header value is never shown again"

    read = rba.get(f"/fhir/Subscription/{subscription_id}")
    assert read.status_code == 200
    assert read.json() == stored

    listed = rba.get("/fhir/Subscription").json()
    assert listed["resourceType"] == "Bundle" and listed["type"] == "searchset"
    assert listed["total"] == 1
    (entry,) = listed["entry"]
    assert entry["resource"] == stored
    assert entry["fullUrl"] == f"{PUBLIC_BASE_URL}/fhir/Subscription/{subscription_id}"

    deleted = rba.delete(f"/fhir/Subscription/{subscription_id}")
    assert deleted.status_code == 200
    assert deleted.json()["status"] == "off"
    assert rba.get(f"/fhir/Subscription/{subscription_id}").json()["status"] == "off"
    assert rba.delete(f"/fhir/Subscription/{subscription_id}").status_code == 200, "turning off again is fine"

    assert audit_rows(db) == [
        ("create", "success", subscription_id, 201),
        ("read", "success", subscription_id, 200),
        ("search", "success", None, 200),
        ("delete", "success", subscription_id, 200),
        ("read", "success", subscription_id, 200),
        ("delete", "success", subscription_id, 200),
    ]


def test_a_ping_subscription_and_an_end_are_kept(as_tenant: AsTenant, db: Database) -> None:
    end = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    created = post(
        as_tenant("trust-rba"),
        subscription(criteria="Task", end=end.isoformat(), channel=channel(payload=None, header=None)),
    )
    assert created.status_code == 201, created.text
    stored = created.json()
    assert stored["channel"] == {"type": "rest-hook", "endpoint": ENDPOINT}
    assert datetime.fromisoformat(stored["end"]) == end


# --- every problem as a 400 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expression", "words"),
    [
        (subscription(criteria="Task?patient=9000000009"), "Subscription.criteria", "'patient'"),
        (subscription(criteria="MedicationRequest?status=active"), "Subscription.criteria", "only Task"),
        (subscription(criteria="Task?business-status=lost"), "Subscription.criteria", "'lost'"),
        (subscription(criteria="Task?owner=not an ods"), "Subscription.criteria", "not an ODS code"),
        (subscription(criteria="Task?_lastUpdated=gt2026"), "Subscription.criteria", "'_lastUpdated'"),
        (subscription(channel=None), "Subscription.channel", "missing"),
        (subscription(criteria=None), "Subscription.criteria", "missing"),
        (subscription(reason=None), "Subscription.reason", "missing"),
        (subscription(status="active"), "Subscription.status", "must be 'requested'"),
        (subscription(status="bogus"), "Subscription.status", "not a Subscription status"),
        (subscription(channel=channel(type="websocket")), "Subscription.channel.type", "only rest-hook"),
        (subscription(channel=channel(endpoint=None)), "Subscription.channel.endpoint", "missing"),
        (
            subscription(channel=channel(endpoint="http://ehr.rba.example.nhs.uk/hook")),
            "Subscription.channel.endpoint",
            "https",
        ),
        (
            subscription(channel=channel(endpoint="https://user:pw@ehr.example/hook")),
            "Subscription.channel.endpoint",
            "credentials",
        ),
        (subscription(channel=channel(endpoint="hook")), "Subscription.channel.endpoint", "https"),
        (
            subscription(channel=channel(payload="application/fhir+xml")),
            "Subscription.channel.payload",
            "not supported",
        ),
        (
            subscription(channel=channel(header=["Content-Type: text/plain"])),
            "Subscription.channel.header[0]",
            "set by the gateway",
        ),
        (
            subscription(channel=channel(header=["Authorization: a", "X-Evil: b\r\nHost: c"])),
            "Subscription.channel.header[1]",
            "line breaks",
        ),
        (subscription(channel=channel(header=["no colon"])), "Subscription.channel.header[0]", "Name: value"),
        (subscription(end="2020-01-01T00:00:00Z"), "Subscription.end", "in the past"),
        (subscription(end="soon"), "Subscription.end", "Invalid value"),
        (subscription(reason=42), "Subscription.reason", "Wrong JSON type"),
        (subscription(topic="x"), "Subscription.topic", "Unknown element"),
        ({"resourceType": "Task", "status": "requested"}, "resourceType", "FHIR Subscription"),
    ],
)
def test_every_problem_is_a_400_naming_its_element(
    as_tenant: AsTenant, db: Database, resource: dict[str, Any], expression: str, words: str
) -> None:
    response = post(as_tenant("trust-rba"), resource)
    assert response.status_code == 400, response.text
    found = [issue for issue in issues(response) if expression in issue.get("expression", [])]
    assert found, (expression, response.text)
    assert words in found[0]["diagnostics"]
    assert all(issue["severity"] == "error" and issue["details"]["coding"] for issue in issues(response))


def test_all_problems_are_reported_at_once(as_tenant: AsTenant, db: Database) -> None:
    response = post(
        as_tenant("trust-rba"),
        subscription(
            status="off",
            criteria="Task?subject=x",
            channel=channel(type="email", endpoint="ftp://x", payload="text/plain"),
        ),
    )
    assert response.status_code == 400
    assert expressions(response) >= {
        "Subscription.status",
        "Subscription.criteria",
        "Subscription.channel.type",
        "Subscription.channel.endpoint",
        "Subscription.channel.payload",
    }


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"", 400), (b"{not json", 400), (b"[]", 400)],
)
def test_a_body_that_is_not_a_subscription_is_refused(
    as_tenant: AsTenant, db: Database, body: bytes, status: int
) -> None:
    response = as_tenant("trust-rba").post("/fhir/Subscription", content=body, headers=FHIR_JSON)
    assert response.status_code == status
    assert issues(response)
    assert audit_rows(db) == [("create", "refused", None, status)]


def test_a_subscription_must_be_fhir_json(as_tenant: AsTenant, db: Database) -> None:
    response = as_tenant("trust-rba").post(
        "/fhir/Subscription", content=orjson.dumps(subscription()), headers={"Content-Type": "text/xml"}
    )
    assert response.status_code == 415
    assert audit_rows(db) == [("create", "refused", None, 415)]


def test_development_accepts_plain_http_to_loopback_only(as_tenant: AsTenant, db: Database) -> None:
    rba = as_tenant("trust-rba")
    for endpoint in ("http://127.0.0.1:8200/hook", "http://localhost:8200/hook"):
        assert post(rba, subscription(channel=channel(endpoint=endpoint))).status_code == 201, endpoint
    refused = post(rba, subscription(channel=channel(endpoint="http://10.1.2.3/hook")))
    assert refused.status_code == 400
    assert expressions(refused) == {"Subscription.channel.endpoint"}


@pytest.fixture
def production_server(database: Database, db: Database, tmp_path: Path) -> Iterator[RunningServer]:
    """The gateway in production mode on the test database (its own signing key folder)."""
    keys = tmp_path / "keys"
    ensure_signing_key(keys, now=system_clock())
    settings = Settings(
        environment=Environment.PRODUCTION,
        data_dir=tmp_path,
        signing_keys_dir=keys,
        public_base_url=PUBLIC_BASE_URL,
        audit_seal_seconds=0,
        run_dispatcher=False,
    )
    with RunningServer(with_test_resolver(create_app(settings, db=database))) as running:
        yield running


def test_production_wants_https_to_a_public_address(
    production_server: RunningServer, tenants: dict[str, Tenant]
) -> None:
    with http_as(production_server, tenants["trust-rba"]) as rba:
        for endpoint in (
            "http://127.0.0.1:8200/hook",
            "https://127.0.0.1/hook",
            "https://localhost/hook",
            "https://192.168.1.10/hook",
            "https://[::1]/hook",
            "https://169.254.169.254/latest",
        ):
            refused = post(rba, subscription(channel=channel(endpoint=endpoint)))
            assert refused.status_code == 400, endpoint
            assert expressions(refused) == {"Subscription.channel.endpoint"}
        assert post(rba, subscription()).status_code == 201


def test_the_endpoint_rules() -> None:
    production = EndpointPolicy(resolver=SUBSCRIBER_HOSTS)
    development = EndpointPolicy(allow_loopback=True, resolver=SUBSCRIBER_HOSTS)
    assert production.url_problem(ENDPOINT) is None
    assert production.check("https://8.8.8.8:8443/hook") == ["8.8.8.8"]
    assert development.check("http://127.0.0.1:1/hook") == ["127.0.0.1"]
    assert production.url_problem("http://127.0.0.1:1/hook")
    assert production.url_problem("https://ehr.example/hook#part")
    assert production.url_problem("https://ehr.example:0/hook")
    assert production.url_problem("https://ehr.example/a b")
    assert production.url_problem("https://" + "a" * 2000 + ".example/")


@pytest.mark.parametrize(
    "criteria",
    [
        "Task",
        "Task?owner=VNCEL",
        "Task?owner=https://fhir.nhs.uk/Id/ods-organization-code|VNCEL",
        "Task?owner=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fods-organization-code%7CVNCEL",
        "Task?owner:identifier=https://fhir.nhs.uk/Id/ods-organization-code|VNCEL",
        "Task?business-status=delivered",
        "Task?business-status=https://homecare-gateway.nhs.uk/CodeSystem/homecare-status|delivered",
        "Task?owner=VNCEL,VNFKT&business-status=dispensed,delivered",
    ],
)
def test_supported_criteria(criteria: str) -> None:
    assert parse_criteria(criteria).matches(owner_ods="VNCEL", business_status="delivered")


@pytest.mark.parametrize(
    "criteria",
    [
        "Task?",
        "Task?owner",
        "Task?owner=",
        "Task?owner=VNCEL,",
        "Task?owner=http://example.org/ods|VNCEL",
        "Task?business-status=http://example.org|delivered",
        "Task?status=completed",
        "task",
        "Task/123",
        "Task?" + "owner=VNCEL&" * 60,
    ],
)
def test_unsupported_criteria_are_refused(criteria: str) -> None:
    with pytest.raises(CriteriaError):
        parse_criteria(criteria)


def test_criteria_combine_like_a_search() -> None:
    both = parse_criteria("Task?owner=VNCEL&business-status=dispensed,delivered")
    assert both.matches(owner_ods="VNCEL", business_status="dispensed")
    assert not both.matches(owner_ods="VNFKT", business_status="dispensed")
    assert not both.matches(owner_ods="VNCEL", business_status="accepted")
    repeated = parse_criteria("Task?owner=VNCEL&owner=VNFKT")
    assert not repeated.matches(owner_ods="VNCEL", business_status="accepted"), "repeated means all of"
    assert parse_criteria("Task").matches(owner_ods="ANY", business_status="queued")


# --- scopes, roles, tenancy ----------------------------------------------------------------------


def test_another_trusts_subscription_answers_as_a_missing_one(as_tenant: AsTenant, db: Database) -> None:
    rba, rbb = as_tenant("trust-rba"), as_tenant("trust-rbb")
    subscription_id = post(rba, subscription()).json()["id"]
    for method in ("GET", "DELETE"):
        theirs = rbb.request(method, f"/fhir/Subscription/{subscription_id}")
        missing = rbb.request(method, f"/fhir/Subscription/{uuid.uuid4()}")
        assert theirs.status_code == 404, method
        assert theirs.content == missing.content, "existence must not leak"
    assert rbb.get("/fhir/Subscription").json()["total"] == 0
    assert rba.get(f"/fhir/Subscription/{subscription_id}").json()["status"] == "active", (
        "RBB changed nothing"
    )
    assert post(rbb, subscription()).status_code == 201
    assert rba.get("/fhir/Subscription").json()["total"] == 1


def test_a_provider_cannot_subscribe(as_tenant: AsTenant, db: Database) -> None:
    response = post(as_tenant("provider-vncel"), subscription())
    assert response.status_code == 403
    assert issues(response)[0]["code"] == "forbidden"
    assert as_tenant("provider-vncel").get("/fhir/Subscription").status_code == 403


def test_only_a_trusts_systems_may_subscribe_even_holding_the_scope(db: Database) -> None:
    provider = Caller("provider-x", Role.PROVIDER, "VNCEL", frozenset({"system/Subscription.crud"}))
    with pytest.raises(OperationOutcomeError) as refused:
        service.create_subscription(
            Context(db),
            document=subscription(),
            caller=provider,
            endpoints=EndpointPolicy(resolver=SUBSCRIBER_HOSTS),
            request_id=str(uuid.uuid4()),
        )
    assert refused.value.status_code == 403
    assert audit_rows(db) == [("create", "refused", None, 403)]


def test_each_operation_needs_its_subscription_scope(as_tenant: AsTenant, db: Database) -> None:
    subscription_id = post(as_tenant("trust-rba"), subscription()).json()["id"]
    path = f"/fhir/Subscription/{subscription_id}"
    no_scope = as_tenant("trust-rba", scope="system/Task.rs")
    for response in (post(no_scope, subscription()), no_scope.get(path), no_scope.delete(path)):
        assert response.status_code == 403
        assert "system/Subscription." in issues(response)[0]["diagnostics"]
    reader = as_tenant("trust-rba", scope="system/Subscription.r")
    assert reader.get(path).status_code == 200
    assert reader.get("/fhir/Subscription").status_code == 200
    assert post(reader, subscription()).status_code == 403
    assert reader.delete(path).status_code == 403
    # The clinician app of the same trust was not given subscription scopes.
    assert as_tenant("clinician-app-rba").get(path).status_code == 403
    assert ("create", "refused", None, 403) in audit_rows(db)


def test_a_request_without_a_token_is_401(server: RunningServer, db: Database) -> None:
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert post(anonymous, subscription()).status_code == 401
        assert anonymous.get("/fhir/Subscription").status_code == 401
