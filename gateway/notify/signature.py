"""Signatures on notifications: a detached JWS (RFC 7515 Appendix F) over the exact body bytes.

The `X-Signature` header is `BASE64URL(header)..BASE64URL(signature)`: a compact JWS with its payload
left out, because the payload is the body itself. The protected header is `{"alg": "ES256", "kid":
...}`, signed with the gateway's current signing key, so a subscriber verifies it with the public
keys at `/.well-known/jwks.json` (see docs/subscriptions.md). An empty body (a ping) is signed too.
"""

from __future__ import annotations

from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from auth.signing import ACCESS_TOKEN_ALGORITHM

SIGNATURE_HEADER = "X-Signature"
SIGNATURE_ALGORITHM = ACCESS_TOKEN_ALGORITHM  # the gateway's keys are P-256: ES256


class SignatureError(Exception):
    """A signature that is malformed, made with a key not in the key set, or not over these bytes."""


def sign_detached(body: bytes, key: ECKey) -> str:
    """The detached compact JWS of `body`, with the key's `kid` in the protected header."""
    protected = {"alg": SIGNATURE_ALGORITHM, "kid": key.kid}
    compact = jws.serialize_compact(protected, body, key, algorithms=[SIGNATURE_ALGORITHM])
    header, _, signature = compact.split(".")
    return f"{header}..{signature}"


def verify_detached(signature: str, body: bytes, keys: KeySet) -> dict[str, Any]:
    """The protected header of a valid signature of `body` by one of `keys`; else SignatureError."""
    parts = signature.split(".")
    if len(parts) != 3 or parts[1] or not parts[0] or not parts[2]:
        raise SignatureError("not a detached compact JWS (header..signature)")
    try:
        verified = jws.deserialize_compact(signature, keys, payload=body, algorithms=[SIGNATURE_ALGORITHM])
    except (JoseError, ValueError) as exc:
        raise SignatureError(f"the signature does not verify: {type(exc).__name__}") from exc
    return dict(verified.headers())
