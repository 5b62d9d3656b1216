"""Identical submissions racing each other create one prescription (real threads, real sockets)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.store import prescriptions as store
from gateway.store.db import Database
from tests.support import RunningServer, Tenant, access_token

RACERS = 12


def _race(server: RunningServer, tenant: Tenant, bodies: list[bytes]) -> list[httpx.Response]:
    token = access_token(server, tenant)

    def send(body: bytes) -> httpx.Response:
        # One connection per racer, so the requests really overlap.
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            return http.post(
                "/fhir/$process-message",
                content=body,
                headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"},
            )

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_concurrent_identical_submissions_create_one_prescription(
    server: RunningServer, db: Database, tenants: dict[str, Tenant]
) -> None:
    body = orjson.dumps(PrescriptionMessageBuilder(seed=31).build(items=2))
    responses = _race(server, tenants["trust-rba"], [body] * RACERS)
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1, "every racer gets the same answer"
    assert len({r.headers["location"] for r in responses}) == 1
    with db.snapshot() as tx:
        assert store.count_prescriptions(tx) == 1


def test_concurrent_bundles_reusing_one_prescription_id_accept_exactly_one(
    server: RunningServer, db: Database, tenants: dict[str, Tenant]
) -> None:
    builder = PrescriptionMessageBuilder(seed=32)
    first = builder.build(items=1)
    short_form = first["entry"][1]["resource"]["groupIdentifier"]["value"]
    bodies = [orjson.dumps(first)] + [
        orjson.dumps(builder.build(items=1, short_form_id=short_form)) for _ in range(RACERS - 1)
    ]
    responses = _race(server, tenants["trust-rba"], bodies)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * (RACERS - 1), statuses
    with db.snapshot() as tx:
        assert store.count_prescriptions(tx) == 1
