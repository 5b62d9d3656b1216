"""The token service's own rules, called directly: each refusal of a client assertion with the text
that tells the client what to fix, the limits at their exact edges, and what an issued token and its
audit row say. (tests/test_token_endpoint.py drives the same rules over HTTP.)"""

from __future__ import annotations

import base64
import json
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
    ASSERTION_ALGORITHMS,
    ASSERTION_TYPE,
    CLOCK_SKEW_SECONDS,
    MAX_JTI_LENGTH,
    MAX_LIFETIME_SECONDS,
    AssertionRefusedError,
    MalformedAssertionError,
    VerifiedAssertion,
    check_assertion,
    read_assertion,
    refuse_unsupported_algorithm,
    sign_assertion,
)
from auth.clients import disable_client
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


# Reading an assertion, before any key is looked up.


def test_an_assertion_at_the_length_limit_is_read_and_one_character_more_is_refused() -> None:
    at_limit = "a" * 16_384
    with pytest.raises(MalformedAssertionError) as refused:
        read_assertion(at_limit)
    assert str(refused.value) == "client_assertion is not a signed JWT (JWS compact serialisation)"
    with pytest.raises(MalformedAssertionError) as refused:
        read_assertion(at_limit + "a")
    assert str(refused.value) == "client_assertion is too long"


def _compact(header: dict[str, Any], payload: bytes) -> str:
    encode = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    return f"{encode(json.dumps(header).encode())}.{encode(payload)}.{encode(b'signature')}"


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b'{"iss": "a", "iss": "b"}', "client_assertion's payload gives a claim twice"),
        (b'["iss", "sub"]', "client_assertion's payload is not a JSON object"),
        (b"not json", "client_assertion is not a signed JWT (JWS compact serialisation)"),
    ],
)
def test_a_malformed_payload_is_refused_saying_how(payload: bytes, text: str) -> None:
    with pytest.raises(MalformedAssertionError) as refused:
        read_assertion(_compact({"alg": "ES384", "kid": "k"}, payload))
    assert str(refused.value) == text


@pytest.mark.parametrize(
    ("header", "text"),
    [
        (
            {"alg": "HS256", "kid": "k"},
            f"alg 'HS256' is not accepted; use one of {', '.join(ASSERTION_ALGORITHMS)}",
        ),
        ({"alg": "ES384"}, "the JWT header has no 'kid' naming the registered key that signed it"),
    ],
)
def test_an_unusable_header_is_refused_before_any_key_is_looked_up(header: dict[str, Any], text: str) -> None:
    assertion = read_assertion(_compact(header, json.dumps(claims()).encode()))
    with pytest.raises(AssertionRefusedError) as refused:
        refuse_unsupported_algorithm(assertion)
    assert str(refused.value) == text
    assert ", ".join(ASSERTION_ALGORITHMS) == "RS512, RS384, ES384, RS256, ES256"


def test_a_signed_assertion_carries_every_claim_and_the_keys_own_algorithm() -> None:
    key = ECKey.generate_key("P-256")
    text = sign_assertion(key=key, kid="k-1", client_id=CLIENT, token_url=TOKEN_URL, now=NOW, jti="j-9")
    token = jwt.decode(text, key)
    assert token.header == {"alg": "ES256", "kid": "k-1", "typ": "JWT"}
    assert token.claims == {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": TOKEN_URL,
        "jti": "j-9",
        "iat": NOW,
        "exp": NOW + MAX_LIFETIME_SECONDS,
    }


# The token service's refusals, with the text and the audit row each gets.


def _form(**values: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": "x.y.z",
    }
    base.update(values)
    return {name: value for name, value in base.items() if value is not None}


@pytest.mark.parametrize(
    ("form", "error", "text"),
    [
        (_form(grant_type=None), "invalid_request", "grant_type is required"),
        (
            _form(grant_type="password"),
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        ),
        (
            _form(client_assertion_type="jwt"),
            "invalid_request",
            f"client_assertion_type must be {ASSERTION_TYPE}",
        ),
        (
            _form(client_assertion=None),
            "invalid_request",
            "client_assertion is required (a JWT signed with the client's key)",
        ),
        (
            _form(client_assertion="not-a-jwt"),
            "invalid_request",
            "client_assertion is not a signed JWT (JWS compact serialisation)",
        ),
    ],
)
def test_a_form_without_what_the_grant_needs_is_refused_saying_what_and_audited(
    service: TokenService, db: Database, form: dict[str, str], error: str, text: str
) -> None:
    with pytest.raises(OAuthError) as refused:
        service.issue(form, request_id="r-form")
    assert (refused.value.error, refused.value.description) == (error, text)
    assert _refusal_row(db, "r-form") == (error, None)


def _refusal_row(db: Database, request_id: str) -> tuple[str | None, str | None]:
    with db.read() as session:
        (event,) = session.execute(
            select(AuditEvent).where(col(AuditEvent.request_id) == request_id)
        ).scalars()
    assert (event.action, event.outcome) == ("issue-token", "refused")
    return event.reason, event.client_id


def _signed_for(tenant: Tenant, **change: Any) -> str:
    given = {**claims(), "iss": tenant.client_id, "sub": tenant.client_id, "exp": int(time.time()) + 60}
    given.update(change)
    header = {"alg": tenant.key.algorithm, "kid": change.pop("kid", tenant.key.kid)}
    return jwt.encode(
        header,
        {name: value for name, value in given.items() if value is not None and name != "kid"},
        tenant.key.private,
        algorithms=[tenant.key.algorithm],
    )


@pytest.mark.parametrize(
    ("case", "text", "named"),
    [
        ("no iss", "the assertion has no 'iss' (the client id)", None),
        ("client_id differs", "client_id does not match the assertion's 'iss'", None),
        ("unknown client", "unknown client", None),
        ("unknown kid", "kid 'not-registered' is not a registered key of this client", "trust-rba"),
        ("disabled", "this client is disabled", "trust-rbb"),
    ],
)
def test_an_assertion_from_no_usable_client_is_refused_saying_why_and_audited(
    service: TokenService, tenants: dict[str, Tenant], db: Database, case: str, text: str, named: str | None
) -> None:
    rba, rbb = tenants["trust-rba"], tenants["trust-rbb"]
    form = {
        "no iss": _form(client_assertion=_signed_for(rba, iss=None)),
        "client_id differs": _form(client_assertion=_signed_for(rba), client_id="trust-rbb"),
        "unknown client": _form(client_assertion=_signed_for(rba, iss="nobody", sub="nobody")),
        "unknown kid": _form(client_assertion=_signed_for(rba, kid="not-registered")),
        "disabled": _form(client_assertion=_signed_for(rbb)),
    }[case]
    if case == "disabled":
        with db.write() as session:
            disable_client(session, "trust-rbb", now=datetime.now(UTC))
    with pytest.raises(OAuthError) as refused:
        service.issue(form, request_id=f"r-{case}")
    assert (refused.value.error, refused.value.description) == ("invalid_client", text)
    assert _refusal_row(db, f"r-{case}") == ("invalid_client", named)


def test_a_scope_refusal_is_audited_under_the_client_that_asked(
    service: TokenService, tenants: dict[str, Tenant], db: Database
) -> None:
    with pytest.raises(OAuthError):
        service.issue(form_for(tenants["trust-rba"], scope="system/MedicationDispense.c"), request_id="r-sc")
    assert _refusal_row(db, "r-sc") == ("invalid_scope", "trust-rba")
