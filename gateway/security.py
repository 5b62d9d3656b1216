"""Building the gateway's token service from its settings: signing keys, client key cache, URLs."""

from __future__ import annotations

import httpx

from auth.clients import ClientKeys
from auth.signing import SigningKeys, ensure_signing_key
from auth.tokens import TokenService
from gateway.clock import Clock
from gateway.settings import Settings
from gateway.store.db import Database


def http_for_key_sets(settings: Settings) -> httpx.Client:
    """The one HTTP client that fetches clients' JWKS: short timeout, no redirects."""
    return httpx.Client(timeout=settings.jwks_fetch_timeout_seconds, follow_redirects=False)


def build_token_service(settings: Settings, db: Database, clock: Clock) -> TokenService:
    keys_dir = settings.resolved_signing_keys_dir
    if settings.is_development:
        ensure_signing_key(keys_dir, now=clock())
    return TokenService(
        db,
        signing_keys=SigningKeys(keys_dir),
        client_keys=ClientKeys(
            http=http_for_key_sets(settings),
            ttl=settings.jwks_cache_seconds,
            min_refresh=settings.jwks_refresh_seconds,
        ),
        token_url=settings.token_url,
        issuer=settings.base_url,
        audience=f"{settings.base_url}/fhir",
        lifetime_seconds=settings.access_token_seconds,
        clock=clock,
    )
