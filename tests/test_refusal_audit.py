"""Refused requests in the audit log over real HTTP: 401s for a missing or forged bearer token, 429s and
5xx get a row, without patient data; a flood of them is coalesced into a bounded number of rows that
carry its count; the count is part of the sealed chain."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from joserfc import jwt
from sqlalchemy import text

from auth import audit
from auth.identity import Role
from gateway.clock import system_clock
from gateway.domain.refusals import OVERFLOW_SOURCE, Refusal, RefusalLog
from gateway.store.audit import seal_audit_log
from gateway.store.db import Database
from tests import limits_support
from tests.limits_support import StartGateway, refusal_rows
from tests.support import ClientKey, Tenant, http_as, register, token_request

start_gateway = limits_support.start_gateway
NHS_NUMBER = "9434765919"


def forged_token() -> str:
    """An access token shaped like ours, signed by a key the gateway never had."""
    key = ClientKey.generate("ES256")
    claims = {"iss": "https://homecare-gateway.test", "client_id": "trust-rba", "scope": "system/Task.rs"}
    return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, claims, key.private)


def test_a_missing_and_a_forged_bearer_token_are_audited(start_gateway: StartGateway, db: Database) -> None:
    server = start_gateway()
    with limits_support.from_address(server, "127.0.0.1") as anonymous:
        assert anonymous.get(f"/fhir/Task?patient={NHS_NUMBER}").status_code == 401
        forged = anonymous.get(
            f"/fhir/Task?patient={NHS_NUMBER}", headers={"Authorization": f"Bearer {forged_token()}"}
        )
        assert forged.status_code == 401
    rows = refusal_rows(db)
    assert [(row["reason"], row["status"], row["outcome"], row["count"]) for row in rows] == [
        ("no-bearer-token", 401, "refused", 1),
        ("invalid-token", 401, "refused", 1),
    ]
    for row in rows:
        # Whoever it was is not known: the address stands for them, and the route, not the URL.
        assert (row["client_id"], row["source"], row["route"]) == (None, "127.0.0.1", "GET /fhir/Task")
        assert NHS_NUMBER not in repr(row)
    assert rows[1]["request_id"] == forged.headers["x-request-id"]


def test_a_flood_of_refusals_is_a_bounded_number_of_rows_that_count_it(
    start_gateway: StartGateway, db: Database
) -> None:
    server = start_gateway()
    flood = 40
    with limits_support.from_address(server, "127.0.0.1") as anonymous:
        for _ in range(flood):
            body = orjson.dumps({"resourceType": "Bundle", "id": NHS_NUMBER})
            assert anonymous.post("/fhir/$process-message", content=body).status_code == 401
        assert anonymous.get("/fhir/Task/some-task").status_code == 401
    # The first of each kind is written at once...
    assert [(row["route"], row["count"]) for row in refusal_rows(db)] == [
        ("POST /fhir/$process-message", 1),
        ("GET /fhir/Task/{id}", 1),
    ]
    # ...the rest when their window closes, or the process stops: one more row, with their count.
    server.__exit__()
    rows = refusal_rows(db)
    flooded = [row for row in rows if row["route"] == "POST /fhir/$process-message"]
    assert len(rows) == 3 and len(flooded) == 2
    assert sum(row["count"] for row in flooded) == flood
    assert all(NHS_NUMBER not in repr(row) for row in rows)


def test_floods_of_token_refusals_and_scope_refusals_are_bounded_too(
    start_gateway: StartGateway, db: Database, tenants: dict[str, Tenant]
) -> None:
    server = start_gateway()
    flood = 20
    rbb = tenants["trust-rbb"]
    with limits_support.from_address(server, "127.0.0.1") as anonymous:
        for _ in range(flood):
            # Signed by a real key, in the name of a client nobody registered.
            assertion = rbb.key.assertion("nobody-registered-this")
            assert token_request(anonymous, assertion).status_code == 401
    with http_as(server, tenants["clinician-app-rba"]) as app:
        for _ in range(flood):
            assert app.post("/fhir/Subscription", content=b"{}").status_code == 403
    server.__exit__()

    def row_of(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["action"], row["client_id"], row["source"], row["route"], row["status"], row["reason"])

    with db.read() as session:
        rows = [dict(row._mapping) for row in session.execute(text("SELECT * FROM audit_event ORDER BY id"))]
    refused = [row for row in rows if row["outcome"] == "refused"]
    assert [(row_of(row), row["count"]) for row in refused] == [
        (("issue-token", None, "127.0.0.1", "POST /auth/token", 401, "invalid_client"), 1),
        (("create", "clinician-app-rba", None, "POST /fhir/Subscription", 403, "insufficient_scope"), 1),
        (("issue-token", None, "127.0.0.1", "POST /auth/token", 401, "invalid_client"), flood - 1),
        (
            ("create", "clinician-app-rba", None, "POST /fhir/Subscription", 403, "insufficient_scope"),
            flood - 1,
        ),
    ]
    assert refused[1]["resource_type"] == "Subscription" and refused[1]["ods_code"] == "RBA"


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # its own database, or none
def test_a_server_error_is_audited_under_the_client(
    start_gateway: StartGateway, db: Database, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A database of its own whose subscription table is gone: listing subscriptions fails there.
    broken = Database(f"sqlite:///{tmp_path_factory.mktemp('broken') / 'gateway.db'}")
    broken.migrate()
    trust = Tenant("trust-rbc", Role.TRUST, "RBC", "system/Subscription.crud", ClientKey.generate("ES256"))
    register(broken, trust)
    with broken.write() as session:
        session.execute(text("DROP TABLE subscription"))
    server = start_gateway(database_=broken)
    with http_as(server, trust) as rbc:
        for _ in range(3):
            assert rbc.get("/fhir/Subscription").status_code >= 500
    server.__exit__()
    rows = refusal_rows(broken)
    assert {(row["client_id"], row["route"], row["outcome"], row["reason"]) for row in rows} == {
        ("trust-rbc", "GET /fhir/Subscription", "failed", "server-error")
    }
    assert [row["count"] for row in rows] == [1, 2] and rows[0]["source"] is None
    broken.dispose()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # its own database, or none
def test_the_keys_of_a_window_are_capped(db: Database) -> None:
    log = RefusalLog(db, system_clock, window_seconds=3600, max_keys=2)
    written = [
        log.note(Refusal(status=401, route="GET /fhir/Task", source=f"192.0.2.{n}"), request_id=None)
        for n in range(50)
    ]
    firsts = [record for record in written if record is not None]
    # Two addresses of their own, then everyone else under one key.
    assert [record.source for record in firsts] == ["192.0.2.0", "192.0.2.1", OVERFLOW_SOURCE]
    closing = log.drain(everything=True)
    assert [(record.source, record.count) for record in closing] == [(OVERFLOW_SOURCE, 47)]


def test_a_refusal_rows_count_is_sealed_into_the_chain(start_gateway: StartGateway, db: Database) -> None:
    server = start_gateway()
    with limits_support.from_address(server, "127.0.0.1") as anonymous:
        for _ in range(5):
            assert anonymous.get("/fhir/Task").status_code == 401
    server.__exit__()
    seal_audit_log(db)
    with db.write() as session:
        session.execute(text("UPDATE audit_event SET count = 1 WHERE count = 4"))
    with db.read() as session:
        verification = audit.verify(session, now=system_clock(), max_unsealed_age=timedelta(minutes=5))
    assert verification.problem is not None and "was edited" in verification.problem
