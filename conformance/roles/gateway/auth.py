"""AUTH: the token endpoint (signed-JWT client authentication, SMART Backend Services) and bearer
tokens on the API. Every refusal is checked for the exact OAuth `error` code, not only the status."""

from __future__ import annotations

import time

from conformance.assertions import hmac_assertion, stranger_key, unsigned_assertion
from conformance.checks import expect, expect_oauth_error, expect_refusal, expect_status, json_body
from conformance.model import Evidence, Requirement, Role, conformance_test
from conformance.roles.gateway.context import PROCESS_MESSAGE, GatewayRun

ROLE = Role.GATEWAY
AUTHN = "DESIGN.md §6, §10 Security"


def _claims(run: GatewayRun, **overrides: object) -> dict[str, object]:
    claims = run.client("trust_a").identity.claims(run.token_url)
    claims.update(overrides)
    return claims


@conformance_test(
    "AUTH-01",
    "A correctly signed client assertion gets a bearer access token",
    Requirement(
        "RFC 7523 / SMART Backend Services", "client_credentials with private_key_jwt issues an access token"
    ),
    role=ROLE,
)
def valid_assertion(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    response = run.request_token(identity.assertion(run.token_url))
    expect_status(response, 200)
    body = json_body(response)
    expect(
        isinstance(body.get("access_token"), str) and body["access_token"] != "",
        "no access_token in the answer",
    )
    expect(
        str(body.get("token_type", "")).lower() == "bearer",
        f"token_type is {body.get('token_type')!r}, not bearer",
    )
    expect(
        isinstance(body.get("expires_in"), int) and body["expires_in"] > 0,
        "expires_in must be a positive integer",
    )
    expect(
        "no-store" in response.headers.get("cache-control", ""), "token answers need Cache-Control: no-store"
    )


@conformance_test(
    "AUTH-02",
    "An assertion with alg none is refused: invalid_client",
    Requirement(AUTHN, "alg none is refused with invalid_client (401)"),
    role=ROLE,
)
def alg_none(run: GatewayRun, evidence: Evidence) -> None:
    assertion = unsigned_assertion(_claims(run), run.client("trust_a").identity.kid)
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-03",
    "An HMAC-signed assertion (keyed with the public key) is refused: invalid_client",
    Requirement(AUTHN, "HMAC algorithms are refused with invalid_client (401)"),
    role=ROLE,
)
def alg_hmac(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    public_pem = identity.key.as_pem(private=False)
    expect_oauth_error(
        run.request_token(hmac_assertion(_claims(run), identity.kid, public_pem)), 401, "invalid_client"
    )


@conformance_test(
    "AUTH-04",
    "An assertion for another audience is refused: invalid_client",
    Requirement(AUTHN, "aud must be exactly the token URL; otherwise invalid_client (401)"),
    role=ROLE,
)
def wrong_audience(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    assertion = identity.sign(_claims(run, aud="https://another-gateway.example.nhs.uk/auth/token"))
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-05",
    "An expired assertion is refused: invalid_client",
    Requirement(AUTHN, "an expired assertion is refused with invalid_client (401)"),
    role=ROLE,
)
def expired(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    now = int(time.time())
    assertion = identity.sign(_claims(run, iat=now - 900, exp=now - 600))
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-06",
    "A replayed assertion (same jti) is refused: invalid_client",
    Requirement(AUTHN, "each jti is accepted once; a replay is refused with invalid_client (401)"),
    role=ROLE,
)
def replayed(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    claims = identity.claims(run.token_url)
    assertion = identity.sign(claims)
    expect_status(run.request_token(assertion), 200)
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")
    evidence.note("the same claims signed again (a new signature, the same jti) must be refused too")
    expect_oauth_error(run.request_token(identity.sign(claims)), 401, "invalid_client")


@conformance_test(
    "AUTH-07",
    "An assertion naming an unknown kid is refused: invalid_client",
    Requirement(AUTHN, "unknown kid is refused with invalid_client (401)"),
    role=ROLE,
)
def unknown_kid(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    assertion = identity.sign(_claims(run), kid="conformance-unknown-kid")
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-08",
    "An assertion signed by another key under the registered kid is refused: invalid_client",
    Requirement(AUTHN, "a bad signature is refused with invalid_client (401)"),
    role=ROLE,
)
def bad_signature(run: GatewayRun, evidence: Evidence) -> None:
    identity = run.client("trust_a").identity
    assertion = identity.sign(_claims(run), key=stranger_key(identity.key))
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-09",
    "An assertion valid for more than 5 minutes is refused: invalid_client",
    Requirement(AUTHN, "exp at most 5 minutes ahead"),
    role=ROLE,
)
def too_long(run: GatewayRun, evidence: Evidence) -> None:
    now = int(time.time())
    assertion = run.client("trust_a").identity.sign(_claims(run, iat=now, exp=now + 3600))
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-10",
    "iss different from sub is refused: invalid_client",
    Requirement(AUTHN, "iss = sub = the client id"),
    role=ROLE,
)
def issuer_not_subject(run: GatewayRun, evidence: Evidence) -> None:
    assertion = run.client("trust_a").identity.sign(_claims(run, sub="someone-else"))
    expect_oauth_error(run.request_token(assertion), 401, "invalid_client")


@conformance_test(
    "AUTH-11",
    "Another grant type is refused: unsupported_grant_type",
    Requirement("RFC 6749 §5.2", "unsupported_grant_type (400)"),
    role=ROLE,
)
def other_grant(run: GatewayRun, evidence: Evidence) -> None:
    assertion = run.client("trust_a").identity.assertion(run.token_url)
    expect_oauth_error(run.request_token(assertion, grant_type="password"), 400, "unsupported_grant_type")


@conformance_test(
    "AUTH-12",
    "A token request without an assertion is refused: invalid_request",
    Requirement("RFC 6749 §5.2", "a missing parameter is invalid_request (400)"),
    role=ROLE,
)
def missing_assertion(run: GatewayRun, evidence: Evidence) -> None:
    expect_oauth_error(run.request_token(None), 400, "invalid_request")


@conformance_test(
    "AUTH-13",
    "A scope beyond the client's is refused: invalid_scope",
    Requirement(AUTHN, "invalid_scope (400) for a scope not granted"),
    role=ROLE,
)
def scope_not_granted(run: GatewayRun, evidence: Evidence) -> None:
    assertion = run.client("trust_a").identity.assertion(run.token_url)
    expect_oauth_error(
        run.request_token(assertion, scope="system/MedicationDispense.c"), 400, "invalid_scope"
    )


@conformance_test(
    "AUTH-14",
    "The API refuses a request without a bearer token, or with a forged one: 401",
    Requirement(
        "DESIGN.md §6", "everything but metadata, discovery, JWKS and the token endpoint needs a token"
    ),
    role=ROLE,
)
def no_token(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    headers = {"Content-Type": "application/fhir+json"}
    expect_refusal(
        run.http.post(PROCESS_MESSAGE, content=order.body(), headers=headers), 401, {"login", "security"}
    )
    forged = unsigned_assertion({"sub": "x", "scope": "system/Task.rs"}, "x")
    expect_refusal(
        run.http.get("/fhir/Task", headers={"Authorization": f"Bearer {forged}"}), 401, {"login", "security"}
    )


@conformance_test(
    "AUTH-15",
    "A token without the scope a message needs is refused: 403 forbidden",
    Requirement(AUTHN, "prescription-order needs system/MedicationRequest.c"),
    role=ROLE,
)
def missing_scope(run: GatewayRun, evidence: Evidence) -> None:
    order = run.new_order()
    response = run.http.post(
        PROCESS_MESSAGE,
        content=order.body(),
        headers={"Content-Type": "application/fhir+json", **run.auth("trust_a", "system/Task.rs")},
    )
    expect_refusal(response, 403, "forbidden")


@conformance_test(
    "AUTH-16",
    "Discovery publishes the token endpoint and the signing keys",
    Requirement(
        "SMART App Launch 2 / DESIGN.md §6", "/.well-known/smart-configuration and the JWKS are public"
    ),
    role=ROLE,
)
def discovery(run: GatewayRun, evidence: Evidence) -> None:
    response = run.http.get("/.well-known/smart-configuration")
    expect_status(response, 200)
    document = json_body(response)
    expect(isinstance(document.get("token_endpoint"), str), "smart-configuration has no token_endpoint")
    expect(
        "private_key_jwt" in document.get("token_endpoint_auth_methods_supported", []),
        "token_endpoint_auth_methods_supported does not list private_key_jwt",
    )
    expect(
        "client_credentials" in document.get("grant_types_supported", []),
        "grant_types_supported does not list client_credentials",
    )
    keys = run.gateway_keys()
    expect(len(keys.keys) > 0, "the gateway's JWKS holds no key")
    expect(all(not key.is_private for key in keys.keys), "the gateway's JWKS publishes private key material")
