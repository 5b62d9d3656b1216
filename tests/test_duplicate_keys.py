"""A JSON object that gives a key twice is refused (400, naming the place), on every body the API reads.

orjson keeps the last value; a system that keeps the first would read another patient or sender
from the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws

from fhir_profiles import strict_json
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.store.db import Database
from tests.support import TOKEN_URL, RunningServer, Tenant, token_request

FHIR_JSON = {"Content-Type": "application/fhir+json"}

# A JSON object as its pairs (repeats allowed), so a test controls the bytes a parser sees.
Pairs = list[tuple[str, Any]]
_keys = st.sampled_from(["a", "b", "c", "value", "a:b", 'q"', "\u00e9", "x\\"])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["", "x:y", '":', "\\", "t"])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(_keys, inner), max_size=4).map(lambda pairs: ("object", pairs)),
    ),
    max_leaves=12,
)


def _render(value: Any, spacing: str, escape_colons: bool) -> str:
    if isinstance(value, tuple) and value and value[0] == "object":
        parts = [
            f"{_render_string(key, escape_colons)}{spacing}:{spacing}{_render(item, spacing, escape_colons)}"
            for key, item in value[1]
        ]
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(item, spacing, escape_colons) for item in value) + "]"
    if isinstance(value, str):
        return _render_string(value, escape_colons)
    return json.dumps(value)


def _render_string(text: str, escape_colons: bool) -> str:
    rendered = json.dumps(text, ensure_ascii=False)
    return rendered.replace(":", "\\u003a") if escape_colons else rendered


def _has_repeat(value: Any) -> bool:
    if isinstance(value, tuple) and value and value[0] == "object":
        keys = [key for key, _ in value[1]]
        return len(keys) != len(set(keys)) or any(_has_repeat(item) for _, item in value[1])
    if isinstance(value, list):
        return any(_has_repeat(item) for item in value)
    return False


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(_keys, _values), max_size=5).map(lambda pairs: ("object", pairs)),
    st.sampled_from(["", " ", "\n  "]),
    st.booleans(),
)
def test_a_repeated_key_anywhere_is_found_and_nothing_else_is(value: Any, spacing: str, escape: bool) -> None:
    raw = _render(value, spacing, escape).encode()
    if _has_repeat(value):
        with pytest.raises(strict_json.DuplicateKeyError):
            strict_json.loads(raw)
    else:
        assert strict_json.loads(raw) == orjson.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1", "a": {"b": [1, {"c": "d:e"}]}}]}',
        # A backslash, but no escaped colon: still cleared by the count.
        b'{"resourceType": "Bundle", "note": "a \\"quoted\\" word\\n", "id": "x"}',
    ],
)
def test_a_body_without_repeats_is_cleared_without_reading_it_key_by_key(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key-by-key reading is for the few bodies the colon count cannot clear; every intake body
    taking it would cost several times the parse."""

    def read_key_by_key(_: bytes) -> None:
        raise AssertionError("cleared by reading it key by key")

    monkeypatch.setattr(strict_json, "_locate", read_key_by_key)
    assert strict_json.loads(raw) == json.loads(raw)


def test_the_repeat_is_named_by_its_place() -> None:
    raw = b'{"resourceType":"Bundle","entry":[{"resource":{"identifier":[{"value":"1","value":"2"}]}}]}'
    with pytest.raises(strict_json.DuplicateKeyError) as refused:
        strict_json.loads(raw)
    assert refused.value.duplicate.expression == "Bundle.entry[0].resource.identifier[0].value"


def _order_with_two_nhs_numbers() -> bytes:
    message = PrescriptionMessageBuilder(seed=21).build(items=1)
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    first = orjson.dumps(patient["identifier"][0]).decode()
    body = orjson.dumps(message).decode()
    twice = first.replace('"value":', '"value":"9000000009","value":', 1)
    assert first in body
    return body.replace(first, twice, 1).encode()


def test_an_order_naming_two_patients_in_one_identifier_is_refused(
    client: httpx.Client, db: Database
) -> None:
    response = client.post("/fhir/$process-message", content=_order_with_two_nhs_numbers(), headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    (issue,) = response.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[2].resource.identifier[0].value"]
    assert "twice" in issue["diagnostics"]


@pytest.mark.parametrize(
    ("client_id", "method", "path", "body"),
    [
        ("provider-vncel", "POST", "/fhir/Task", b'{"resourceType":"Task","status":"x","status":"y"}'),
        ("provider-vncel", "PUT", "/fhir/Task/some-id", b'{"resourceType":"Task","owner":{},"owner":{}}'),
        ("provider-vncel", "POST", "/fhir", b'{"resourceType":"Bundle","type":"transaction","type":"batch"}'),
        (
            "trust-rba",
            "POST",
            "/fhir/Communication",
            b'{"resourceType":"Communication","about":[],"about":[]}',
        ),
        (
            "trust-rba",
            "POST",
            "/fhir/Subscription",
            b'{"resourceType":"Subscription","channel":{"endpoint":"a","endpoint":"b"}}',
        ),
    ],
)
def test_every_json_body_is_refused_when_it_repeats_a_key(
    as_tenant: Callable[..., httpx.Client], client_id: str, method: str, path: str, body: bytes
) -> None:
    response = as_tenant(client_id).request(method, path, content=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    (issue,) = response.json()["issue"]
    assert issue["details"]["coding"][0]["code"] == "INVALID_JSON"
    assert "twice" in issue["diagnostics"]


def test_a_client_assertion_that_gives_a_claim_twice_is_refused(
    server: RunningServer, db: Database, tenants: dict[str, Tenant]
) -> None:
    tenant = tenants["trust-rba"]
    now = int(time.time())
    payload = (
        f'{{"iss":"{tenant.client_id}","sub":"{tenant.client_id}","aud":"https://elsewhere.example/token",'
        f'"aud":"{TOKEN_URL}","jti":"dup-{now}","iat":{now},"exp":{now + 60}}}'
    )
    header = {"alg": tenant.key.algorithm, "kid": tenant.key.kid, "typ": "JWT"}
    assertion = jws.serialize_compact(
        header, payload.encode(), tenant.key.private, algorithms=[header["alg"]]
    )
    with httpx.Client(base_url=server.base_url) as http:
        response = token_request(http, assertion)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
