"""OAuth 2.0 client-credentials tokens for the `fhir-rest` adapter, cached until shortly before expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from adapters.base import AdapterTransportError

# Fetch a new token this long before the old one expires, so a token never lapses mid-request.
_EXPIRY_MARGIN_SECONDS = 30.0
_DEFAULT_LIFETIME_SECONDS = 300.0


class ClientCredentialsTokens:
    """Access tokens from a token endpoint (`grant_type=client_credentials`, HTTP Basic client auth)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._token_url = token_url
        self._auth = httpx.BasicAuth(client_id, client_secret)
        self._scope = scope
        self._monotonic = monotonic
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._monotonic() >= self._expires_at:
                self._token, lifetime = await self._fetch()
                self._expires_at = self._monotonic() + max(lifetime - _EXPIRY_MARGIN_SECONDS, lifetime / 2)
            return self._token

    def forget(self) -> None:
        """Drop the cached token (the provider refused it); the next send fetches a new one."""
        self._token = None

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        try:
            response = await self._client.post(self._token_url, data=form, auth=self._auth)
        except httpx.TimeoutException as exc:
            raise AdapterTransportError("token endpoint timed out") from exc
        except httpx.TransportError as exc:
            raise AdapterTransportError(f"token endpoint unreachable ({type(exc).__name__})") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise AdapterTransportError(
                f"token endpoint answered HTTP {response.status_code}", status_code=response.status_code
            )
        if response.status_code != 200:
            raise AdapterTransportError(
                f"token endpoint refused the client credentials (HTTP {response.status_code}"
                f"{_oauth_error(response)})",
                credentials_problem=True,
                status_code=response.status_code,
            )
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", _DEFAULT_LIFETIME_SECONDS))
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterTransportError("token endpoint sent no usable access_token") from exc
        if not isinstance(token, str) or not token:
            raise AdapterTransportError("token endpoint sent no usable access_token")
        return token, lifetime


def _oauth_error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f", {error}" if isinstance(error, str) else ""
