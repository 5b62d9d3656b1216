"""The token service's own rules, called directly: each refusal of a client assertion with the text
that tells the client what to fix, the limits at their exact edges, and what an issued token and its
audit row say. (tests/test_token_endpoint.py drives the same rules over HTTP.)"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlmodel import col, select

from auth.assertion import (
    ASSERTION_TYPE,
    CLOCK_SKEW_SECONDS,
    MAX_JTI_LENGTH,
    MAX_LIFETIME_SECONDS,
    AssertionRefusedError,
    VerifiedAssertion,
    check_assertion,
    read_assertion,
)
from auth.models import AuditEvent
from auth.tokens import InvalidAccessTokenError, OAuthError, TokenService
from gateway.security import build_token_service
from gateway.settings import Settings
from gateway.store.db import Database
from tests.support import PUBLIC_BASE_URL, TOKEN_URL, ClientKey, Tenant

# The service's clock, far from the machine's: a rule that read the wall clock instead would differ.
NOW = 1_000_000_000
CLIENT = "trust-rba"


@pytest.fixture(scope="module")
def key() -> ClientKey:
    return ClientKey.generate("ES384")


def claims(**changes: Any) -> dict[str, Any]:
    given = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL, "jti": str(uuid.uuid4()), "exp": NOW + 120}
    given.update(changes)
    return {name: value for name, value in given.items() if value is not None}


def check(key: ClientKey, given: dict[str, Any], *, signer: ClientKey | None = None) -> VerifiedAssertion:
    signing = signer or key
    text = jwt.encode(
        {"alg": signing.algorithm, "kid": key.kid}, given, signing.private, algorithms=["ES384"]
    )
    return check_assertion(read_assertion(text), key=key.private, token_url=TOKEN_URL, now=NOW)


def refusal(key: ClientKey, given: dict[str, Any], *, signer: ClientKey | None = None) -> str:
    with pytest.raises(AssertionRefusedError) as refused:
        check(key, given, signer=signer)
    return str(refused.value)


def test_a_sound_assertion_names_its_client_jti_and_expiry_by_the_services_clock(key: ClientKey) -> None:
    verified = check(key, claims(jti="j-1"))
    assert verified == VerifiedAssertion(client_id=CLIENT, jti="j-1", expires_at=NOW + 120)


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({"exp": NOW + MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS}, True),
        ({"exp": NOW + MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS + 1}, False),
        ({"exp": NOW + 1}, True),
        ({"exp": NOW}, False),
        ({"jti": "j" * MAX_JTI_LENGTH}, True),
        ({"jti": "j" * (MAX_JTI_LENGTH + 1)}, False),
        ({"iat": NOW + CLOCK_SKEW_SECONDS}, True),
        ({"iat": NOW + CLOCK_SKEW_SECONDS + 1}, False),
        ({"nbf": NOW + CLOCK_SKEW_SECONDS}, True),
        ({"nbf": NOW + CLOCK_SKEW_SECONDS + 1}, False),
    ],
    ids=lambda value: str(value) if isinstance(value, bool) else "-".join(value),
)
def test_each_limit_holds_at_its_exact_edge(key: ClientKey, change: dict[str, Any], accepted: bool) -> None:
    if accepted:
        check(key, claims(**change))
    else:
        refusal(key, claims(**change))


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"iss": None}, "claim check failed: Missing claim: 'iss'"),
        ({"sub": None}, "claim check failed: Missing claim: 'sub'"),
        ({"aud": None}, "claim check failed: Missing claim: 'aud'"),
        ({"exp": None}, "claim check failed: Missing claim: 'exp'"),
        ({"jti": None}, "claim check failed: Missing claim: 'jti'"),
        ({"iat": NOW + 60}, "claim check failed: The token was issued in the future"),
        ({"sub": "someone-else"}, "'iss' and 'sub' must both be the client id"),
        ({"aud": "https://elsewhere.test/token"}, f"'aud' must be exactly the token URL {TOKEN_URL}"),
        ({"exp": NOW - 1}, "the assertion has expired ('exp' is in the past)"),
        ({"exp": NOW + 3600}, "'exp' is more than 5 minutes in the future"),
        ({"jti": "j" * 300}, f"'jti' is longer than {MAX_JTI_LENGTH} characters"),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(f"{k}={v}" for k, v in value.items()),
)
def test_each_refusal_says_what_to_fix(key: ClientKey, change: dict[str, Any], text: str) -> None:
    assert refusal(key, claims(**change)) == text


def test_a_signature_by_another_key_is_refused_saying_so(key: ClientKey) -> None:
    other = ClientKey.generate("ES384")
    assert refusal(key, claims(), signer=other) == "the signature does not verify with the registered key"


def test_a_registered_key_that_cannot_check_the_signature_is_named(key: ClientKey) -> None:
    text = jwt.encode({"alg": "ES384", "kid": key.kid}, claims(), key.private, algorithms=["ES384"])
    with pytest.raises(AssertionRefusedError) as refused:
        check_assertion(read_assertion(text), key=ECKey.generate_key("P-256"), token_url=TOKEN_URL, now=NOW)
    assert re.fullmatch(rf"the signature cannot be checked with key '{key.kid}' \(\w+\)", str(refused.value))


# The service, as the gateway builds it, with one registered client.


@pytest.fixture
def service(db: Database, tmp_path: Path) -> Iterator[TokenService]:
    settings = Settings(data_dir=tmp_path / "gateway", public_base_url=PUBLIC_BASE_URL)
    built = build_token_service(settings, db, lambda: datetime.now(UTC))
    yield built
    built.close()


def form_for(tenant: Tenant, **extra: str) -> dict[str, str]:
    assertion = tenant.key.assertion(tenant.client_id)
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


def test_an_issued_token_names_its_client_and_is_one_of_a_kind(
    service: TokenService, tenants: dict[str, Tenant]
) -> None:
    rba = tenants["trust-rba"]
    first = service.issue(form_for(rba), request_id="r-1")
    second = service.issue(form_for(rba), request_id="r-2")
    assert first.client_id == second.client_id == "trust-rba"
    decoded = [
        jwt.decode(issued.access_token, service.signing_keys.verification_keys) for issued in (first, second)
    ]
    assert [token.claims["sub"] for token in decoded] == ["trust-rba", "trust-rba"]
    jtis = [token.claims["jti"] for token in decoded]
    assert all(uuid.UUID(jti).version == 4 for jti in jtis) and jtis[0] != jtis[1]


def test_an_issued_token_is_audited_under_its_client(
    service: TokenService, tenants: dict[str, Tenant], db: Database
) -> None:
    service.issue(form_for(tenants["trust-rba"]), request_id="r-issue")
    with db.read() as session:
        (event,) = session.execute(
            select(AuditEvent).where(col(AuditEvent.request_id) == "r-issue")
        ).scalars()
    assert (event.action, event.outcome, event.status) == ("issue-token", "success", 200)
    assert (event.client_id, event.role, event.ods_code) == ("trust-rba", "trust", "RBA")
    assert (event.resource_type, event.resource_id) == ("Client", "trust-rba")


@pytest.mark.parametrize(
    ("scope", "text"),
    [
        ("system/MedicationDispense.c", "not granted to this client: system/MedicationDispense.c"),
        (
            "system/MedicationDispense.c system/Task.rs system/Practitioner.r",
            "not granted to this client: system/MedicationDispense.c system/Practitioner.r",
        ),
    ],
)
def test_a_scope_refusal_names_every_scope_not_granted(
    service: TokenService, tenants: dict[str, Tenant], scope: str, text: str
) -> None:
    with pytest.raises(OAuthError) as refused:
        service.issue(form_for(tenants["trust-rba"], scope=scope), request_id="r-scope")
    assert (refused.value.error, refused.value.description) == ("invalid_scope", text)


def test_a_scope_that_is_not_a_scope_is_refused_with_the_parsers_reason(
    service: TokenService, tenants: dict[str, Tenant]
) -> None:
    with pytest.raises(OAuthError) as refused:
        service.issue(form_for(tenants["trust-rba"], scope="system/Task.zz"), request_id="r-bad")
    assert refused.value.error == "invalid_scope"
    assert "system/Task.zz" in refused.value.description and refused.value.description != "None"


@pytest.mark.parametrize("kind", ["not a JWT", "tampered payload"])
def test_a_token_that_is_not_ours_is_refused_saying_so(service: TokenService, kind: str) -> None:
    key = service.signing_keys.signing_key
    header = {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    token = jwt.encode(
        header, {"iss": PUBLIC_BASE_URL, "exp": int(time.time()) + 60}, key, algorithms=["ES256"]
    )
    first, _, signature = token.split(".")
    other = jwt.encode(header, {"iss": "https://elsewhere.test"}, key, algorithms=["ES256"]).split(".")[1]
    sent = "e30.e30.e30" if kind == "not a JWT" else f"{first}.{other}.{signature}"
    with pytest.raises(InvalidAccessTokenError) as refused:
        service.caller_for(sent)
    assert str(refused.value) == "the access token is not one this gateway signed"
