"""Access tokens from the gateway for a provider's own system, by the signed-JWT client-credentials pattern
(NHS API platform, SMART Backend Services): a client assertion signed with the provider's private key,
exchanged at the token endpoint, cached until shortly before it expires."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The gateway refuses assertions that live longer than five minutes.
_ASSERTION_LIFETIME_SECONDS = 240
_EXPIRY_MARGIN_SECONDS = 30.0


class TokenRefused(Exception):  # noqa: N818 -- named for what happened
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignedJwtTokens:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        token_endpoint: str,
        audience: str,
        client_id: str,
        key: RSAKey | ECKey,
        kid: str,
        algorithm: str,
        scope: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._endpoint = token_endpoint
        self._audience = audience
        self._client_id = client_id
        self._key = key
        self._kid = kid
        self._algorithm = algorithm
        self._scope = scope
        self._monotonic = monotonic
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._audience,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME_SECONDS,
        }
        header = {"alg": self._algorithm, "kid": self._kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[self._algorithm])

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._monotonic() >= self._expires_at:
                self._token, lifetime = await self._fetch()
                self._expires_at = self._monotonic() + max(lifetime - _EXPIRY_MARGIN_SECONDS, lifetime / 2)
            return self._token

    def forget(self) -> None:
        self._token = None

    async def _fetch(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        if self._scope:
            form["scope"] = self._scope
        response = await self._client.post(self._endpoint, data=form)
        if response.status_code != 200:
            raise TokenRefused(f"token endpoint answered HTTP {response.status_code}: {response.text[:200]}")
        body = response.json()
        return str(body["access_token"]), float(body.get("expires_in", 300))
