"""Client assertions (RFC 7523 private_key_jwt, as the NHS API platform and SMART Backend Services use).

A client proves who it is with a short-lived JWT signed by its private key: `iss` = `sub` = its
client id, `aud` the gateway's token URL, `exp` at most five minutes ahead, a `jti` never used
before and the key's `kid` in the header. `sign_assertion` makes one (for integrators, the demo
and tests); `read_assertion` and `check_assertion` take one apart on the gateway. All JOSE work is
joserfc's; the algorithms are an explicit list, so `none` and HMAC can never verify.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey

from fhir_profiles import strict_json

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# RS512 is the NHS API platform's; RS384 and ES384 are SMART Backend Services'; the 256s are allowed.
ASSERTION_ALGORITHMS = ("RS512", "RS384", "ES384", "RS256", "ES256")
MAX_LIFETIME_SECONDS = 300
# Clocks differ a little: an `exp` this much beyond five minutes, or an `iat` this far ahead, passes.
CLOCK_SKEW_SECONDS = 10
MAX_JTI_LENGTH = 255
_MAX_ASSERTION_BYTES = 16_384


class MalformedAssertionError(ValueError):
    """Not a signed JWT at all: the request is malformed (invalid_request)."""


class AssertionRefusedError(ValueError):
    """A JWT that does not prove the client's identity (invalid_client); the text says why."""


@dataclass(frozen=True, slots=True)
class UnverifiedAssertion:
    """A JWT taken apart but not yet trusted: enough to find the client and its key."""

    signed: jws.CompactSignature
    header: dict[str, Any]
    claims: dict[str, Any]

    @property
    def algorithm(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None

    @property
    def issuer(self) -> str | None:
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) and iss else None


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    expires_at: int


def private_key(data: bytes) -> RSAKey | ECKey:
    """An RSA or EC private key from PEM or JWK JSON bytes (never guessed into an HMAC secret)."""
    source: Any = json.loads(data) if data.lstrip().startswith(b"{") else data
    for key_class in (RSAKey, ECKey):
        try:
            key = key_class.import_key(source)
        except (JoseError, ValueError, TypeError):
            continue
        if key.is_private:
            return key
    raise ValueError("not an RSA or EC private key")


def load_private_key(path: Path) -> RSAKey | ECKey:
    """An RSA or EC private key from a PEM (or JWK JSON) file."""
    try:
        return private_key(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path} does not hold an RSA or EC private key") from exc


@dataclass(frozen=True, slots=True)
class ClientKeyPair:
    """A new client key: the private PEM stays with the client, the JWKS is registered."""

    kid: str
    private_pem: bytes
    jwks: dict[str, Any]


def generate_client_key(algorithm: str, *, kid: str | None = None) -> ClientKeyPair:
    """A key pair for one of the accepted algorithms; `kid` defaults to the key's RFC 7638 thumbprint."""
    if algorithm not in ASSERTION_ALGORITHMS:
        raise ValueError(f"choose one of {', '.join(ASSERTION_ALGORITHMS)}")
    key: RSAKey | ECKey
    if algorithm.startswith("RS"):
        key = RSAKey.generate_key(4096 if algorithm == "RS512" else 2048)
    else:
        key = ECKey.generate_key("P-384" if algorithm == "ES384" else "P-256")
    key_id = kid or key.thumbprint()
    public = {**key.as_dict(private=False), "kid": key_id, "alg": algorithm, "use": "sig"}
    return ClientKeyPair(key_id, key.as_pem(private=True), {"keys": [public]})


def request_access_token(
    http: httpx.Client, *, token_url: str, assertion: str, scope: str | None = None
) -> httpx.Response:
    """POST the client credentials grant with the assertion, as the token endpoint expects it."""
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    if scope:
        form["scope"] = scope
    return http.post(token_url, data=form)


def default_algorithm(key: Key) -> str:
    """RS512 for RSA keys (as the NHS API platform expects); for EC keys ES256 on P-256, else ES384."""
    if isinstance(key, ECKey):
        return "ES256" if key.curve_name == "P-256" else "ES384"
    return "RS512"


def sign_assertion(
    *,
    key: Key,
    kid: str,
    client_id: str,
    token_url: str,
    now: int,
    lifetime: int = MAX_LIFETIME_SECONDS,
    algorithm: str | None = None,
    jti: str | None = None,
) -> str:
    """A client assertion for the token endpoint, signed with the client's private key."""
    alg = algorithm or default_algorithm(key)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "jti": jti or str(uuid.uuid4()),
        "iat": now,
        "exp": now + lifetime,
    }
    return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def read_assertion(text: str) -> UnverifiedAssertion:
    if len(text) > _MAX_ASSERTION_BYTES:
        raise MalformedAssertionError("client_assertion is too long")
    try:
        signed = jws.extract_compact(text.encode("ascii"))
        claims = strict_json.loads(signed.payload)
    except strict_json.DuplicateKeyError as exc:
        # Another reader might keep the other value of a repeated claim (`aud`, `iss`, `exp`...).
        raise MalformedAssertionError("client_assertion's payload gives a claim twice") from exc
    except (JoseError, ValueError, UnicodeError) as exc:
        raise MalformedAssertionError(
            "client_assertion is not a signed JWT (JWS compact serialisation)"
        ) from exc
    if not isinstance(claims, dict):
        raise MalformedAssertionError("client_assertion's payload is not a JSON object")
    return UnverifiedAssertion(signed=signed, header=signed.headers(), claims=claims)


def refuse_unsupported_algorithm(assertion: UnverifiedAssertion) -> None:
    """Before any key is looked up: only asymmetric signatures, never `none` or HMAC."""
    if assertion.algorithm not in ASSERTION_ALGORITHMS:
        raise AssertionRefusedError(
            f"alg '{assertion.algorithm}' is not accepted; use one of {', '.join(ASSERTION_ALGORITHMS)}"
        )
    if assertion.kid is None:
        raise AssertionRefusedError("the JWT header has no 'kid' naming the registered key that signed it")


def check_assertion(
    assertion: UnverifiedAssertion, *, key: Key, token_url: str, now: int
) -> VerifiedAssertion:
    """Verify the signature with the client's registered key, then every claim RFC 7523 asks for."""
    refuse_unsupported_algorithm(assertion)
    try:
        valid = jws.validate_compact(assertion.signed, key, algorithms=[assertion.algorithm])
    except JoseError as exc:
        raise AssertionRefusedError(
            f"the signature cannot be checked with key '{assertion.kid}' ({exc.error})"
        ) from exc
    if not valid:
        raise AssertionRefusedError("the signature does not verify with the registered key")
    claims = assertion.claims
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=CLOCK_SKEW_SECONDS,
        iss={"essential": True},
        sub={"essential": True},
        aud={"essential": True},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise AssertionRefusedError(f"claim check failed: {exc.description or exc.error}") from exc
    issuer, subject, audience = claims["iss"], claims["sub"], claims["aud"]
    if issuer != subject:
        raise AssertionRefusedError("'iss' and 'sub' must both be the client id")
    if audience != token_url and audience != [token_url]:
        raise AssertionRefusedError(f"'aud' must be exactly the token URL {token_url}")
    expires_at = claims["exp"]
    if expires_at <= now:
        raise AssertionRefusedError("the assertion has expired ('exp' is in the past)")
    if expires_at > now + MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS:
        raise AssertionRefusedError("'exp' is more than 5 minutes in the future")
    jti = claims["jti"]
    if len(jti) > MAX_JTI_LENGTH:
        raise AssertionRefusedError(f"'jti' is longer than {MAX_JTI_LENGTH} characters")
    return VerifiedAssertion(client_id=issuer, jti=jti, expires_at=int(expires_at))
