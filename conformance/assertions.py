"""Client assertions (RFC 7523 private_key_jwt) as a trust or provider system signs them, plus the
forged and broken ones a gateway must refuse. joserfc signs the good ones; the forgeries (alg none,
HMAC) are put together by hand, since no honest library makes them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class KeyFileError(ValueError):
    """A key file the suite cannot use."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_signing_key(path: Path) -> RSAKey | ECKey:
    """A private key from a PEM file (or a JWK JSON file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    source: bytes | dict[str, Any] = data
    if data.lstrip().startswith(b"{"):
        source = json.loads(data)
    for key_class in (ECKey, RSAKey):
        try:
            key = key_class.import_key(source)
        except (ValueError, TypeError):
            continue
        if not key.is_private:
            raise KeyFileError(f"{path} holds a public key; the suite needs the private key to sign")
        return key
    raise KeyFileError(f"{path} is not an RSA or EC private key (PEM or JWK)")


def default_algorithm(key: RSAKey | ECKey) -> str:
    if isinstance(key, RSAKey):
        return "RS512"
    return EC_ALGORITHMS.get(str(key.curve_name), "ES384")


@dataclass(frozen=True)
class SigningIdentity:
    """A machine client as the suite holds it: its id, private key, key id and algorithm."""

    client_id: str
    key: RSAKey | ECKey
    kid: str
    algorithm: str

    @classmethod
    def from_file(
        cls, client_id: str, path: Path, kid: str | None = None, alg: str | None = None
    ) -> SigningIdentity:
        key = load_signing_key(path)
        return cls(client_id, key, kid or key.thumbprint(), alg or default_algorithm(key))

    def claims(self, audience: str, *, lifetime: int = 240, now: int | None = None) -> dict[str, Any]:
        issued = int(time.time()) if now is None else now
        return {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + lifetime,
            "jti": str(uuid.uuid4()),
        }

    def sign(
        self, claims: dict[str, Any], *, kid: str | None = None, key: RSAKey | ECKey | None = None
    ) -> str:
        header = {"alg": self.algorithm, "kid": kid or self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, key or self.key, algorithms=[self.algorithm])

    def assertion(self, audience: str, **claim_overrides: Any) -> str:
        claims = self.claims(audience)
        claims.update(claim_overrides)
        return self.sign(claims)


def unsigned_assertion(claims: dict[str, Any], kid: str) -> str:
    """`alg: none`: a JWT with no signature at all."""
    header = {"alg": "none", "kid": kid, "typ": "JWT"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def hmac_assertion(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    """HS256 keyed with something public (the classic algorithm-confusion forgery)."""
    header = {"alg": "HS256", "kid": kid, "typ": "JWT"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def stranger_key(like: RSAKey | ECKey) -> RSAKey | ECKey:
    """A fresh key of the same kind: its signatures are valid, just not by the registered key."""
    if isinstance(like, RSAKey):
        return RSAKey.generate_key(2048)
    return ECKey.generate_key(str(like.curve_name))


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, without checking anything (for evidence and checks)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (three dot-separated parts)")

    def part(text: str) -> dict[str, Any]:
        decoded = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(decoded, dict):
            raise ValueError("a JWS part is not a JSON object")
        return decoded

    return part(parts[0]), part(parts[1])
