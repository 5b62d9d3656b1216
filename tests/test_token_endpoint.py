"""POST /auth/token over real HTTP: every refusal gets its OAuth error; issued tokens verify."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from sqlmodel import col, select

from auth.assertion import ASSERTION_TYPE
from auth.clients import ClientKeys, KeySetError, KeySource, add_client, disable_client, fetch_key_set
from auth.identity import Caller, Role
from auth.models import AuditEvent, Client, UsedAssertion
from auth.signing import (
    MissingSigningKeyError,
    SigningKeyError,
    SigningKeys,
    ensure_signing_key,
    generate_signing_key,
    key_files,
)
from auth.tokens import InvalidAccessTokenError, OAuthError
from gateway.security import build_token_service
from gateway.settings import Settings
from gateway.store.db import Database
from tests.support import (
    PUBLIC_BASE_URL,
    TOKEN_URL,
    ClientKey,
    RunningServer,
    Tenant,
    register,
    token_request,
)


@pytest.fixture
def anonymous(server: RunningServer, db: Database) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def rba(tenants: dict[str, Tenant]) -> Tenant:
    return tenants["trust-rba"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(client_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "jti": str(uuid.uuid4()),
        "exp": now + 120,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def signed(tenant: Tenant, claims: dict[str, Any], **header: Any) -> str:
    key = tenant.key
    protected = {
        name: value for name, value in {"alg": key.algorithm, "kid": key.kid, **header}.items() if value
    }
    return jwt.encode(protected, claims, key.private, algorithms=[key.algorithm])


def refusals(db: Database) -> list[AuditEvent]:
    with db.read() as session:
        return list(session.execute(select(AuditEvent).where(col(AuditEvent.outcome) == "refused")).scalars())


def test_a_registered_client_gets_a_short_lived_access_token(
    anonymous: httpx.Client, rba: Tenant, server: RunningServer
) -> None:
    response = token_request(anonymous, rba.key.assertion(rba.client_id))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"].split() == rba.scopes.split()
    published = KeySet.import_key_set(anonymous.get("/.well-known/jwks.json").json())
    token = jwt.decode(body["access_token"], published, algorithms=["ES256"])
    assert token.header["typ"] == "at+jwt"
    assert token.claims["client_id"] == "trust-rba"
    assert token.claims["role"] == "trust" and token.claims["ods_code"] == "RBA"
    assert token.claims["exp"] - token.claims["iat"] == 300
    assert (token.claims["iss"], token.claims["aud"]) == (PUBLIC_BASE_URL, f"{PUBLIC_BASE_URL}/fhir")


def test_a_client_may_ask_for_fewer_scopes(anonymous: httpx.Client, rba: Tenant) -> None:
    response = token_request(anonymous, rba.key.assertion(rba.client_id), scope="system/MedicationRequest.r")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/MedicationRequest.r"


@pytest.mark.parametrize("algorithm", ["RS512", "RS384", "ES384", "RS256", "ES256"])
def test_every_accepted_algorithm_works(anonymous: httpx.Client, db: Database, algorithm: str) -> None:
    tenant = Tenant(
        f"alg-{algorithm.lower()}", Role.TRUST, "RBC", "system/Task.rs", ClientKey.generate(algorithm)
    )
    register(db, tenant)
    response = token_request(anonymous, tenant.key.assertion(tenant.client_id))
    assert response.status_code == 200, response.text


def test_a_replayed_assertion_is_refused(anonymous: httpx.Client, rba: Tenant, db: Database) -> None:
    assertion = rba.key.assertion(rba.client_id)
    assert token_request(anonymous, assertion).status_code == 200
    again = token_request(anonymous, assertion)
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    assert "replay" in again.json()["error_description"]


def _other_key_same_kid(tenant: Tenant) -> ClientKey:
    other = ClientKey.generate(tenant.key.algorithm)
    return ClientKey(other.private, tenant.key.kid, other.algorithm, other.jwks)


def _hmac_with_public_key(tenant: Tenant) -> str:
    # The classic confusion attack: HS256 keyed with the registered public key, done by hand.
    public_pem = tenant.key.private.as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": tenant.key.kid, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims_for(tenant.client_id)).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _with_header(assertion: str, **changes: Any) -> str:
    header, payload, signature = assertion.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    return f"{b64(json.dumps({**decoded, **changes}).encode())}.{payload}.{signature}"


def _unsigned(tenant: Tenant) -> str:
    header = b64(json.dumps({"alg": "none", "kid": tenant.key.kid, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims_for(tenant.client_id)).encode())}."


ASSERTIONS: dict[str, Callable[[Tenant], str]] = {
    "wrong aud": lambda t: t.key.assertion(t.client_id, token_url="https://elsewhere.test/auth/token"),
    "aud of the FHIR base": lambda t: signed(t, claims_for(t.client_id, aud="https://homecare-gateway.test")),
    "aud list with another": lambda t: signed(t, claims_for(t.client_id, aud=[TOKEN_URL, "https://x.test"])),
    "expired": lambda t: t.key.assertion(t.client_id, now=int(time.time()) - 400),
    "too far in the future": lambda t: t.key.assertion(t.client_id, lifetime=600),
    "no exp": lambda t: signed(t, claims_for(t.client_id, exp=None)),
    "no jti": lambda t: signed(t, claims_for(t.client_id, jti=None)),
    "iss is not sub": lambda t: signed(t, claims_for(t.client_id, sub="someone-else")),
    "unknown kid": lambda t: t.key.assertion(t.client_id, kid="not-registered"),
    "no kid": lambda t: signed(t, claims_for(t.client_id), kid=None),
    "bad signature": lambda t: _other_key_same_kid(t).assertion(t.client_id),
    "tampered payload": lambda t: (
        lambda p: f"{p[0]}.{b64(json.dumps(claims_for(t.client_id)).encode())}.{p[2]}"
    )(t.key.assertion(t.client_id).split(".")),
    "alg none": _unsigned,
    "HS256 with the public key as secret": _hmac_with_public_key,
    "alg not matching the key": lambda t: _with_header(t.key.assertion(t.client_id), alg="ES256"),
    "unknown client": lambda t: t.key.assertion("nobody-registered-this"),
}


@pytest.mark.parametrize("case", list(ASSERTIONS))
def test_an_assertion_that_proves_nothing_is_invalid_client(
    anonymous: httpx.Client, rba: Tenant, db: Database, case: str
) -> None:
    response = token_request(anonymous, ASSERTIONS[case](rba))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    if case == "unknown client":
        (refused,) = refusals(db)
        assert (refused.client_id, refused.role, refused.resource_type, refused.resource_id) == (None,) * 4
    assert response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert [event.reason for event in refusals(db)] == ["invalid_client"]


def test_a_disabled_client_gets_no_token(anonymous: httpx.Client, rba: Tenant, db: Database) -> None:
    with db.write() as session:
        disable_client(session, rba.client_id, now=datetime.now(UTC))
    request_id = str(uuid.uuid4())
    response = anonymous.post(
        "/auth/token",
        data=assertion_form(rba.key.assertion(rba.client_id)),
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    (refused,) = refusals(db)
    assert refused.client_id == rba.client_id and refused.ods_code == "RBA"
    assert (refused.request_id, refused.role, refused.status, refused.reason) == (
        request_id,
        "trust",
        401,
        "invalid_client",
    )
    assert (refused.resource_type, refused.resource_id) == ("Client", rba.client_id)


def test_client_id_in_the_form_must_match_the_assertion(anonymous: httpx.Client, rba: Tenant) -> None:
    response = token_request(anonymous, rba.key.assertion(rba.client_id), client_id="trust-rbb")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("scope", "error"),
    [
        ("system/MedicationDispense.c", "invalid_scope"),
        ("system/MedicationRequest.cruds", "invalid_scope"),
        ("patient/MedicationRequest.r", "invalid_scope"),
        ("openid", "invalid_scope"),
    ],
)
def test_a_scope_not_granted_is_invalid_scope(
    anonymous: httpx.Client, rba: Tenant, scope: str, error: str
) -> None:
    response = token_request(anonymous, rba.key.assertion(rba.client_id), scope=scope)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, 400, "invalid_request"),
        ({"client_assertion_type": "urn:something:else"}, 400, "invalid_request"),
        ({"client_assertion": ""}, 400, "invalid_request"),
        ({"client_assertion": "not.a.jwt"}, 400, "invalid_request"),
        ({"client_assertion": "nothing-like-a-jwt"}, 400, "invalid_request"),
    ],
)
def test_missing_or_malformed_parameters(
    anonymous: httpx.Client, rba: Tenant, form: dict[str, str], status: int, error: str
) -> None:
    response = token_request(anonymous, rba.key.assertion(rba.client_id), **form)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


def test_parameters_must_be_a_form_and_not_repeated(anonymous: httpx.Client, rba: Tenant) -> None:
    assertion = rba.key.assertion(rba.client_id)
    as_json = anonymous.post(
        "/auth/token", json={"grant_type": "client_credentials", "client_assertion": assertion}
    )
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    repeated = anonymous.post(
        "/auth/token",
        content=f"grant_type=client_credentials&grant_type=client_credentials&client_assertion={assertion}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (repeated.status_code, repeated.json()["error"]) == (400, "invalid_request")
    missing_grant = anonymous.post("/auth/token", data={"client_assertion": assertion})
    assert (missing_grant.status_code, missing_grant.json()["error"]) == (400, "invalid_request")


def test_discovery_describes_the_token_endpoint(anonymous: httpx.Client) -> None:
    configuration = anonymous.get("/.well-known/smart-configuration").json()
    assert configuration["token_endpoint"] == TOKEN_URL
    assert configuration["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert {"RS512", "RS384", "ES384"} <= set(
        configuration["token_endpoint_auth_signing_alg_values_supported"]
    )
    assert not {"none", "HS256"} & set(configuration["token_endpoint_auth_signing_alg_values_supported"])
    assert "system/MedicationRequest.c" in configuration["scopes_supported"]
    keys = anonymous.get("/.well-known/jwks.json").json()["keys"]
    assert keys and all(key["kid"] and "d" not in key for key in keys)
    private_members = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
    for key in keys:
        assert not private_members & set(key), "the published key set holds public keys only"
        assert (key["use"], key["alg"]) == ("sig", "ES256")


class _JwksServer:
    """A client's own web server publishing its JWKS, counting fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        self.raw: bytes | None = None  # served instead of the JWKS when set
        self.status = 200
        self.accept: str | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                outer.accept = self.headers.get("Accept")
                body = outer.raw if outer.raw is not None else json.dumps(outer.jwks).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_jwks_url_is_cached_and_refetched_for_a_new_kid(anonymous: httpx.Client, db: Database) -> None:
    first, second = ClientKey.generate("ES384"), ClientKey.generate("ES384")
    published = _JwksServer(first.jwks)
    try:
        with db.write() as session:
            add_client(
                session,
                client_id="trust-by-url",
                role=Role.TRUST,
                ods_code="RBD",
                scopes="system/Task.rs",
                keys=KeySource(jwks=None, jwks_url=published.url),
                now=datetime.now(UTC),
            )
        assert token_request(anonymous, first.assertion("trust-by-url")).status_code == 200
        assert token_request(anonymous, first.assertion("trust-by-url")).status_code == 200
        assert published.fetches == 1, "a known kid is served from the cache"
        published.jwks = {"keys": [*first.jwks["keys"], *second.jwks["keys"]]}
        rotated = token_request(anonymous, second.assertion("trust-by-url"))
        assert rotated.status_code == 200, rotated.text
        assert published.fetches == 2, "an unknown kid fetches the JWKS again"
    finally:
        published.close()


def test_registered_keys_are_public_keys_only(db: Database) -> None:
    with db.read() as session:
        stored = list(session.execute(select(Client)).scalars())
    assert stored
    for client in stored:
        for key in (client.jwks or {}).get("keys", []):
            assert "d" not in key


def test_purging_forgets_only_expired_assertions_so_a_live_one_still_cannot_be_replayed(
    db: Database, settings: Settings, rba: Tenant
) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    moment = [started]
    service = build_token_service(settings, db, lambda: moment[0])
    at = int(started.timestamp())
    short_lived = rba.key.assertion(rba.client_id, now=at, lifetime=30)
    long_lived = rba.key.assertion(rba.client_id, now=at, lifetime=120)
    for assertion in (short_lived, long_lived):
        service.issue(assertion_form(assertion), request_id=str(uuid.uuid4()))
    assert service.purge_used_assertions() == 0, "nothing has expired yet"

    moment[0] = started + timedelta(seconds=60)
    assert service.purge_used_assertions() == 1
    with db.read() as session:
        kept = list(session.execute(select(UsedAssertion)).scalars())
    assert [row.expires_at for row in kept] == [at + 120]
    replay_id = str(uuid.uuid4())
    with pytest.raises(OAuthError) as replayed:
        service.issue(assertion_form(long_lived), request_id=replay_id)
    assert replayed.value.error == "invalid_client" and "replay" in replayed.value.description
    # What a log line or a traceback shows of the refusal: its error and description.
    assert str(replayed.value) == "invalid_client: this assertion's 'jti' was used before (replay)"
    # A token service with no refusal sink (no coalescing gateway around it) audits each refusal in a row.
    with db.read() as session:
        (row,) = session.execute(select(AuditEvent).where(col(AuditEvent.request_id) == replay_id)).scalars()
    assert (row.action, row.outcome, row.client_id, row.status, row.reason) == (
        "issue-token",
        "refused",
        rba.client_id,
        401,
        "invalid_client",
    )

    moment[0] = started + timedelta(seconds=121)
    assert service.purge_used_assertions() == 1
    service.close()


def assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def _key_file(folder: Path, name: str, key: ECKey, *, private: bool = True, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(key.as_pem(private=private))
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o610, 0o601])
def test_a_signing_key_any_group_or_other_may_touch_is_refused(tmp_path: Path, mode: int) -> None:
    _key_file(tmp_path, "signing-1.pem", ECKey.generate_key("P-256", private=True), mode=mode)
    message = "signing-1.pem is readable by others; make it owner-only (chmod 600)"
    with pytest.raises(SigningKeyError, match=rf"^{re.escape(message)}$"):
        SigningKeys(tmp_path)
    assert SigningKeys(tmp_path, require_private_files=False).signing_key.is_private


@pytest.mark.parametrize(
    ("key", "private"),
    [(ECKey.generate_key("P-256", private=True), False), (ECKey.generate_key("P-384", private=True), True)],
    ids=["public-only", "other-curve"],
)
def test_a_signing_key_must_be_a_private_p256_key(tmp_path: Path, key: ECKey, private: bool) -> None:
    _key_file(tmp_path, "signing-1.pem", key, private=private)
    with pytest.raises(SigningKeyError, match=r"^signing-1\.pem is not a P-256 private key$"):
        SigningKeys(tmp_path)


def test_the_first_signing_key_is_generated_once_in_an_owner_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "keys"
    with pytest.raises(
        MissingSigningKeyError, match=rf"^no signing key \(signing-\*\.pem\) in {re.escape(str(folder))}$"
    ):
        SigningKeys(folder)
    path = ensure_signing_key(folder, now=datetime(2026, 11, 30, 6, 1, 2, 345678, tzinfo=UTC))
    assert path.name == "signing-20261130T060102345678Z.pem"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_signing_key(folder, now=datetime.now(UTC)) == path and len(key_files(folder)) == 1
    second = generate_signing_key(folder, now=datetime(2026, 11, 30, 7, tzinfo=UTC))
    assert key_files(folder) == [path, second]


def test_a_key_ring_reloads_only_when_its_folder_changed(tmp_path: Path) -> None:
    first = generate_signing_key(tmp_path, now=datetime(2026, 11, 30, 6, tzinfo=UTC))
    keys = SigningKeys(tmp_path)
    old_kid = keys.signing_key.kid
    assert not keys.refresh(), "nothing changed"
    time.sleep(0.01)
    generate_signing_key(tmp_path, now=datetime(2026, 11, 30, 7, tzinfo=UTC))
    assert keys.refresh(), "a rotation is picked up at once"
    assert keys.signing_key.kid != old_kid
    assert {key["kid"] for key in keys.jwks()["keys"]} == {old_kid, keys.signing_key.kid}
    assert not keys.refresh()
    assert first.exists()


def test_a_fetched_jwks_is_json_of_at_most_64_kib_from_a_200_answer() -> None:
    key = ClientKey.generate("ES384")
    published = _JwksServer(key.jwks)
    limit = 65_536
    try:
        with httpx.Client() as http:
            data, key_set = fetch_key_set(http, published.url)
            assert data == key.jwks and key_set.keys[0].kid == key.kid
            assert published.accept == "application/json"
            # Padded with spaces to the limit exactly: still read; one byte more is refused.
            published.raw = json.dumps(key.jwks).encode().ljust(limit)
            assert fetch_key_set(http, published.url)[0] == key.jwks
            published.raw += b" "
            with pytest.raises(KeySetError, match=r"^the JWKS is too large$"):
                fetch_key_set(http, published.url)
            published.raw = b"<html>not a key set</html>"
            with pytest.raises(KeySetError, match=r"^the JWKS URL did not return JSON$"):
                fetch_key_set(http, published.url)
            published.raw, published.status = b"{}", 404
            with pytest.raises(KeySetError, match=r"^the JWKS URL answered HTTP 404$"):
                fetch_key_set(http, published.url)
            url = published.url
            published.close()
            with pytest.raises(KeySetError, match=r"^the JWKS URL could not be fetched \(ConnectError\)$"):
                fetch_key_set(http, url)
    finally:
        published.httpd.server_close()


class _KeysByUrl(NamedTuple):
    """A client whose keys are at its own JWKS URL, and a key cache on a clock the test moves."""

    key: ClientKey
    published: _JwksServer
    clock: list[float]
    client: Client
    keys: ClientKeys


@pytest.fixture
def by_url() -> Iterator[_KeysByUrl]:
    key = ClientKey.generate("ES384")
    published = _JwksServer(key.jwks)
    clock = [1000.0]
    client = Client(
        client_id="trust-by-url",
        role="trust",
        ods_code="RBD",
        jwks_url=published.url,
        created_at="",
        updated_at="",
    )
    keys = ClientKeys(http=httpx.Client(), ttl=300, min_refresh=10, monotonic=lambda: clock[0])
    try:
        yield _KeysByUrl(key, published, clock, client, keys)
    finally:
        keys.close()
        published.close()


def test_a_jwks_url_is_fetched_again_after_its_ttl_or_for_an_unknown_kid_after_the_minimum_wait(
    by_url: _KeysByUrl,
) -> None:
    key, published, clock, client, keys = by_url
    assert keys.key_for(client, key.kid) is not None and published.fetches == 1
    clock[0] += 299
    assert keys.key_for(client, key.kid) is not None and published.fetches == 1, "fresh: cached"
    clock[0] += 2
    assert keys.key_for(client, key.kid) is not None and published.fetches == 2, "stale: fetched again"
    clock[0] += 9
    assert keys.key_for(client, "new-kid") is None and published.fetches == 2, "too soon to ask again"
    clock[0] += 2
    assert keys.key_for(client, "new-kid") is None and published.fetches == 3


def test_a_jwks_url_that_fails_keeps_the_keys_it_gave_until_it_answers_again(by_url: _KeysByUrl) -> None:
    key, published, clock, client, keys = by_url
    found = keys.key_for(client, key.kid)
    assert found is not None and published.fetches == 1
    clock[0] += 300
    found = keys.key_for(client, key.kid)
    assert found is not None and published.fetches == 2, "stale at exactly the ttl"
    published.status = 503
    for _ in range(3):
        clock[0] += 301
        assert keys.key_for(client, key.kid) is found, "the keys it had, while its server is down"
    fetches = published.fetches
    clock[0] += 299
    assert keys.key_for(client, key.kid) is found and published.fetches == fetches, "a failure waits a ttl"
    published.status = 200
    clock[0] += 1
    assert keys.key_for(client, key.kid) is not None and published.fetches == fetches + 1
    newcomer = client.model_copy(update={"client_id": "trust-never-fetched", "ods_code": "RBE"})
    published.status = 503
    with pytest.raises(KeySetError, match=r"^the JWKS URL answered HTTP 503$"):
        keys.key_for(newcomer, key.kid)


def test_a_stored_key_set_is_read_once_and_again_when_the_client_is_updated(by_url: _KeysByUrl) -> None:
    first, second = ClientKey.generate("ES384"), ClientKey.generate("ES384")
    stored = {
        "client_id": "trust-stored",
        "jwks_url": None,
        "jwks": first.jwks,
        "updated_at": "2026-11-30T10:00Z",
    }
    client, keys = by_url.client.model_copy(update=stored), by_url.keys
    found = keys.key_for(client, first.kid)
    assert found is not None and keys.key_for(client, first.kid) is found, "read once"
    updated = client.model_copy(update={"jwks": second.jwks, "updated_at": "2026-11-30T11:00Z"})
    assert keys.key_for(updated, first.kid) is None
    assert keys.key_for(updated, second.kid) is not None


def _foreign_access_token(folder: Path) -> str:
    """An access token shaped like the gateway's, signed by a key the gateway never had."""
    ensure_signing_key(folder, now=datetime.now(UTC))
    key = SigningKeys(folder).signing_key
    claims = {"iss": PUBLIC_BASE_URL, "aud": f"{PUBLIC_BASE_URL}/fhir", "exp": int(time.time()) + 60}
    return jwt.encode({"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}, claims, key, algorithms=["ES256"])


def test_a_token_of_a_key_another_process_just_added_is_accepted_and_a_foreign_one_refused(
    db: Database, rba: Tenant, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "gateway", public_base_url=PUBLIC_BASE_URL)
    service = build_token_service(settings, db, lambda: datetime.now(UTC))
    other = build_token_service(settings, db, lambda: datetime.now(UTC))  # another process, same keys
    assert service.signing_keys.signing_key.kid, "the key ring was read just now: no reload for a while"
    foreign = _foreign_access_token(tmp_path / "elsewhere")
    not_ours = r"^the access token is not one this gateway signed$"
    with pytest.raises(InvalidAccessTokenError, match=not_ours):
        service.caller_for(foreign)
    time.sleep(0.01)
    generate_signing_key(settings.resolved_signing_keys_dir, now=datetime.now(UTC) + timedelta(seconds=1))
    assert other.signing_keys.refresh()
    form = assertion_form(rba.key.assertion(rba.client_id))
    token = other.issue(form, request_id=str(uuid.uuid4())).access_token
    assert service.caller_for(token).client_id == rba.client_id, "an unknown kid reloads the key ring"
    time.sleep(0.01)
    generate_signing_key(settings.resolved_signing_keys_dir, now=datetime.now(UTC) + timedelta(seconds=2))
    with pytest.raises(InvalidAccessTokenError, match=not_ours):
        service.caller_for(foreign)  # reloaded, and still unknown
    service.close()
    other.close()


def test_an_access_token_is_verified_once_until_it_expires_or_the_keys_change(
    db: Database, rba: Tenant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "gateway", public_base_url=PUBLIC_BASE_URL)
    moment = [datetime.now(UTC)]
    service = build_token_service(settings, db, lambda: moment[0])
    form = assertion_form(rba.key.assertion(rba.client_id))
    issued = service.issue(form, request_id=str(uuid.uuid4()))
    decoded: list[str] = []
    decode = service._decode

    def counting(token: str) -> jwt.Token:
        decoded.append(token)
        return decode(token)

    monkeypatch.setattr(service, "_decode", counting)
    caller = service.caller_for(issued.access_token)
    assert service.caller_for(issued.access_token) == caller and len(decoded) == 1
    time.sleep(0.01)
    generate_signing_key(settings.resolved_signing_keys_dir, now=moment[0] + timedelta(seconds=1))
    assert service.signing_keys.refresh()
    assert service.caller_for(issued.access_token) == caller and len(decoded) == 2, "new keys: checked again"
    assert service.caller_for(issued.access_token) == caller and len(decoded) == 2
    moment[0] += timedelta(seconds=issued.expires_in + 1)
    with pytest.raises(InvalidAccessTokenError, match="expired"):
        service.caller_for(issued.access_token)
    assert len(decoded) == 3
    service.close()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"typ": "JWT"}, r"^not an access token$"),
        ({"iss": "https://elsewhere.example"}, r"^the access token has expired or its claims are not valid$"),
        (
            {"aud": "https://elsewhere.example/fhir"},
            r"^the access token has expired or its claims are not valid$",
        ),
        ({"exp": -1}, r"^the access token has expired or its claims are not valid$"),
        ({"role": "administrator"}, r"^the access token has expired or its claims are not valid$"),
        *(
            ({claim: None}, r"^the access token has expired or its claims are not valid$")
            for claim in ("iss", "aud", "exp", "client_id", "ods_code", "role", "scope")
        ),
    ],
)
def test_an_access_token_signed_by_our_key_with_a_claim_wrong_or_missing_is_refused(
    db: Database, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    settings = Settings(data_dir=tmp_path / "gateway", public_base_url=PUBLIC_BASE_URL)
    service = build_token_service(settings, db, lambda: datetime.now(UTC))
    key = service.signing_keys.signing_key
    now = int(time.time())
    header = {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    claims: dict[str, Any] = {
        "iss": settings.base_url,
        "aud": f"{settings.base_url}/fhir",
        "sub": "trust-rba",
        "client_id": "trust-rba",
        "role": "trust",
        "ods_code": "RBA",
        "scope": "system/Task.rs system/MedicationRequest.rs",
        "iat": now,
        "exp": now + 60,
    }
    good = jwt.encode(header, claims, key, algorithms=["ES256"])
    assert service.caller_for(good) == Caller(
        client_id="trust-rba",
        role=Role.TRUST,
        ods_code="RBA",
        scopes=frozenset({"system/Task.rs", "system/MedicationRequest.rs"}),
    )
    for name, value in change.items():
        target = header if name == "typ" else claims
        if value is None:
            del target[name]
        else:
            target[name] = now - 1 if name == "exp" else value
    with pytest.raises(InvalidAccessTokenError, match=problem):
        service.caller_for(jwt.encode(header, claims, key, algorithms=["ES256"]))
    service.close()
