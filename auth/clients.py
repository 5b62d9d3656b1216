"""The client registry: which machine clients exist, what they may do, and the public keys they sign with.

A client's keys come from a JWKS file (stored with the client) or an https URL the client publishes
(fetched, cached, and fetched again when an assertion names a `kid` the cache does not know, at
most once per `min_refresh` seconds so a stream of bad `kid`s cannot hammer the client's server).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from auth.assertion import ASSERTION_ALGORITHMS
from auth.identity import Role
from auth.models import Client, utc_text
from auth.scopes import ScopeError, beyond_role, parse_scopes
from fhir_profiles.identifiers import is_ods_code

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}")
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MIN_RSA_BITS = 2048
_CURVES = frozenset({"P-256", "P-384"})
_MAX_JWKS_BYTES = 65_536
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_CLIENTS = Client.__table__  # type: ignore[attr-defined]
_SELECT_CLIENT = select(_CLIENTS).where(_CLIENTS.c.client_id == bindparam("client_id"))


class ClientRegistryError(ValueError):
    """A registration that cannot be accepted; the text says why."""


class ClientExistsError(ClientRegistryError):
    pass


class ClientNotFoundError(ClientRegistryError):
    pass


class KeySetError(ClientRegistryError):
    """A key set (or its URL) that the gateway will not accept for verifying assertions."""


def check_client_id(client_id: str) -> str:
    if not _CLIENT_ID.fullmatch(client_id):
        raise ClientRegistryError("a client id is 1-100 letters, digits and . _ : - (starting alphanumeric)")
    return client_id


def parse_key_set(data: Any) -> KeySet:
    """A client's public keys: RSA (2048 bits or more) or EC P-256/P-384, each with a unique `kid`."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise KeySetError('a JWKS is a JSON object {"keys": [...]} with at least one key')
    kids: set[str] = set()
    keys: list[Key] = []
    for position, member in enumerate(data["keys"]):
        where = f"key {position}"
        if not isinstance(member, dict):
            raise KeySetError(f"{where} is not a JSON object")
        if _PRIVATE_MEMBERS & member.keys():
            raise KeySetError(f"{where} holds private key material: register the public key only")
        kid = member.get("kid")
        if not isinstance(kid, str) or not kid:
            raise KeySetError(f"{where} has no 'kid'")
        if kid in kids:
            raise KeySetError(f"kid '{kid}' appears twice")
        if member.get("use", "sig") != "sig":
            raise KeySetError(f"key '{kid}' is not a signing key (use is '{member.get('use')}')")
        if "alg" in member and member["alg"] not in ASSERTION_ALGORITHMS:
            raise KeySetError(
                f"key '{kid}' names alg '{member['alg']}'; accepted: {', '.join(ASSERTION_ALGORITHMS)}"
            )
        try:
            key = _import_public_key(member)
        except (JoseError, ValueError, TypeError) as exc:
            raise KeySetError(f"key '{kid}' cannot be read: {exc}") from exc
        kids.add(kid)
        keys.append(key)
    return KeySet(keys)


def _import_public_key(member: dict[str, Any]) -> Key:
    kty = member.get("kty")
    if kty == "RSA":
        rsa = RSAKey.import_key(member)
        if rsa.public_key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA keys need at least {_MIN_RSA_BITS} bits")
        return rsa
    if kty == "EC":
        ec = ECKey.import_key(member)
        if ec.curve_name not in _CURVES:
            raise ValueError(f"EC keys must be on {' or '.join(sorted(_CURVES))}")
        return ec
    raise ValueError(f"key type '{kty}' is not accepted (RSA or EC)")


def check_jwks_url(url: str, *, allow_http_loopback: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and allow_http_loopback and parts.hostname in _LOOPBACK_HOSTS:
        return url
    raise KeySetError("a JWKS URL must be https (plain http only to loopback in development)")


def fetch_key_set(http: httpx.Client, url: str) -> tuple[dict[str, Any], KeySet]:
    try:
        response = http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise KeySetError(f"the JWKS URL could not be fetched ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise KeySetError(f"the JWKS URL answered HTTP {response.status_code}")
    if len(response.content) > _MAX_JWKS_BYTES:
        raise KeySetError("the JWKS is too large")
    try:
        data = response.json()
    except ValueError as exc:
        raise KeySetError("the JWKS URL did not return JSON") from exc
    return data, parse_key_set(data)


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a client's keys come from: a key set stored with it, or a URL."""

    jwks: dict[str, Any] | None
    jwks_url: str | None


def key_source(value: str, *, http: httpx.Client, allow_http_loopback: bool) -> KeySource:
    """A `--jwks` option: an https URL (fetched now to check it) or a JWKS file."""
    if value.startswith(("https://", "http://")):
        url = check_jwks_url(value, allow_http_loopback=allow_http_loopback)
        fetch_key_set(http, url)
        return KeySource(jwks=None, jwks_url=url)
    path = Path(value)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeySetError(f"{path} is not a readable JWKS file: {exc}") from exc
    parse_key_set(data)
    return KeySource(jwks=data, jwks_url=None)


def add_client(
    session: Session,
    *,
    client_id: str,
    role: Role,
    ods_code: str,
    scopes: str,
    keys: KeySource,
    now: datetime,
) -> Client:
    check_client_id(client_id)
    if not is_ods_code(ods_code):
        raise ClientRegistryError("an ODS code is 3-12 capital letters (A-Z) and digits (0-9)")
    try:
        granted = parse_scopes(scopes)
    except ScopeError as exc:
        raise ClientRegistryError(str(exc)) from exc
    if not granted:
        raise ClientRegistryError("a client needs at least one scope")
    refused = beyond_role(role, granted)
    if refused:
        raise ClientRegistryError(f"a {role.value} client may not hold {' '.join(refused)}")
    if session.get(Client, client_id) is not None:
        raise ClientExistsError(f"client {client_id} is already registered")
    client = Client(
        client_id=client_id,
        role=role.value,
        ods_code=ods_code,
        scopes=granted,
        jwks=keys.jwks,
        jwks_url=keys.jwks_url,
        enabled=True,
        created_at=utc_text(now),
        updated_at=utc_text(now),
    )
    session.add(client)
    return client


def _client(session: Session, client_id: str) -> Client:
    client = session.get(Client, client_id)
    if client is None:
        raise ClientNotFoundError(f"no client {client_id}")
    return client


def disable_client(session: Session, client_id: str, *, now: datetime) -> Client:
    client = _client(session, client_id)
    client.enabled = False
    client.updated_at = utc_text(now)
    session.add(client)
    return client


def replace_client_keys(session: Session, client_id: str, *, keys: KeySource, now: datetime) -> Client:
    """Rotate: the new key set replaces the old (publish both keys in it to overlap)."""
    client = _client(session, client_id)
    client.jwks = keys.jwks
    client.jwks_url = keys.jwks_url
    client.updated_at = utc_text(now)
    session.add(client)
    return client


def get_client(session: Session, client_id: str) -> Client | None:
    # A Core select: the token endpoint looks a client up on every request.
    row = session.connection().execute(_SELECT_CLIENT, {"client_id": client_id}).mappings().first()
    return None if row is None else Client(**row)


def list_clients(session: Session) -> list[Client]:
    return list(session.execute(select(Client).order_by(col(Client.client_id))).scalars())


@dataclass(slots=True)
class _Cached:
    version: str
    keys: KeySet
    fetched_at: float


class ClientKeys:
    """Each process's cache of client key sets: parsed once, URLs fetched again when stale."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        ttl: float,
        min_refresh: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._monotonic = monotonic
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def key_for(self, client: Client, kid: str) -> Key | None:
        """The client's key with this `kid`, or None; raises KeySetError if a URL cannot be read."""
        entry = self._entry(client, refresh_if_older_than=self._ttl)
        key = _by_kid(entry.keys, kid)
        if key is None and client.jwks_url is not None:
            entry = self._entry(client, refresh_if_older_than=self._min_refresh)
            key = _by_kid(entry.keys, kid)
        return key

    def _entry(self, client: Client, *, refresh_if_older_than: float) -> _Cached:
        version = client.jwks_url or client.updated_at
        now = self._monotonic()
        with self._lock:
            entry = self._cache.get(client.client_id)
        fresh = client.jwks_url is None or (
            entry is not None and now - entry.fetched_at < refresh_if_older_than
        )
        if entry is not None and entry.version == version and fresh:
            return entry
        if client.jwks_url is None:
            entry = _Cached(version, parse_key_set(client.jwks), now)
        else:
            try:
                _, keys = fetch_key_set(self._http, client.jwks_url)
            except KeySetError:
                if entry is None or entry.version != version:
                    raise
                # Keep verifying with what we had while the client's server is down; try again later.
                entry = _Cached(version, entry.keys, now)
                with self._lock:
                    self._cache[client.client_id] = entry
                return entry
            entry = _Cached(version, keys, now)
        with self._lock:
            self._cache[client.client_id] = entry
        return entry


def _by_kid(keys: KeySet, kid: str) -> Key | None:
    for key in keys:
        if key.kid == kid:
            return key
    return None
