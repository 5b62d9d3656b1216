"""The security commands an operator and an integrator use, as the docs show them, and the settings
and key files that keep the gateway's own secrets."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from fastapi import FastAPI
from joserfc.jwk import ECKey, Key, RSAKey
from pydantic import ValidationError
from typer.testing import CliRunner

from auth.assertion import (
    default_algorithm,
    generate_client_key,
    load_private_key,
    private_key,
    request_access_token,
)
from auth.clients import (
    ClientNotFoundError,
    KeySetError,
    KeySource,
    add_client,
    check_jwks_url,
    key_source,
    list_clients,
    replace_client_keys,
)
from auth.identity import Role
from auth.models import utc_text
from auth.signing import SigningKeyError, SigningKeys, ensure_signing_key, key_files, rotate_signing_keys
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.app import create_app
from gateway.cli import app as cli
from gateway.settings import Settings
from gateway.store.db import Database
from tests.support import RunningServer, free_port

runner = CliRunner()


@pytest.fixture
def env(db: Database, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": db.url.render_as_string(hide_password=False),
        "HOMECARE_DATA_DIR": str(tmp_path / "data"),
        "HOMECARE_ENVIRONMENT": "development",
    }


def run(env: dict[str, str], *arguments: str) -> str:
    result = runner.invoke(cli, list(arguments), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def printed(env: dict[str, str], *arguments: str) -> str:
    """What a command printed last (the test server's log lines share its stdout)."""
    return run(env, *arguments).strip().splitlines()[-1]


def refused(env: dict[str, str], *arguments: str) -> str:
    result = runner.invoke(cli, list(arguments), env=env)
    assert result.exit_code != 0, result.output
    return result.output


def test_keygen_writes_a_private_key_for_the_owner_and_a_public_jwks(
    env: dict[str, str], tmp_path: Path
) -> None:
    run(env, "clients", "keygen", "--out", str(tmp_path / "trust"), "--alg", "ES384", "--kid", "trust-2026")
    private = tmp_path / "trust.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    jwks = json.loads((tmp_path / "trust.jwks.json").read_text())
    (key,) = jwks["keys"]
    assert key["kid"] == "trust-2026" and key["alg"] == "ES384" and "d" not in key
    assert "choose one of" in refused(
        env, "clients", "keygen", "--out", str(tmp_path / "x"), "--alg", "HS256"
    )


def test_clients_are_added_listed_rotated_and_disabled(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "clients", "keygen", "--out", str(tmp_path / "one"), "--alg", "RS384")
    run(env, "clients", "keygen", "--out", str(tmp_path / "two"), "--alg", "ES384")
    run(
        env,
        *("clients", "add", "--client-id", "epr-rbc", "--role", "trust", "--ods", "RBC"),
        *("--jwks", str(tmp_path / "one.jwks.json"), "--scopes", "system/MedicationRequest.c system/Task.rs"),
    )
    listed = {c["client_id"]: c for c in json.loads(run(env, "clients", "list", "--json"))}
    assert listed["epr-rbc"]["scopes"] == ["system/MedicationRequest.c", "system/Task.rs"]
    run(env, "clients", "rotate-key", "--client-id", "epr-rbc", "--jwks", str(tmp_path / "two.jwks.json"))
    two = json.loads((tmp_path / "two.jwks.json").read_text())["keys"][0]["kid"]

    def listed_client() -> dict[str, object]:
        return next(
            c for c in json.loads(run(env, "clients", "list", "--json")) if c["client_id"] == "epr-rbc"
        )

    assert listed_client()["keys"] == [two]
    run(env, "clients", "disable", "epr-rbc")
    assert listed_client()["enabled"] is False
    assert "already registered" in refused(
        env,
        *("clients", "add", "--client-id", "epr-rbc", "--role", "trust", "--ods", "RBC"),
        *("--jwks", str(tmp_path / "one.jwks.json"), "--scopes", "system/Task.rs"),
    )


@pytest.mark.parametrize(
    ("role", "ods", "scopes", "why"),
    [
        ("provider", "NOTREG", "system/Task.cu", "not a registered provider"),
        ("provider", "VNCEL", "system/MedicationRequest.c", "may not hold system/MedicationRequest.c"),
        ("trust", "RBA", "system/MedicationDispense.c", "may not hold"),
        ("trust", "RBA", "system/MedicationRequest.read", "not a SMART v2 system scope"),
        ("developer", "RBA", "system/Task.rs", "choose one of"),
    ],
)
def test_a_registration_that_makes_no_sense_is_refused(
    env: dict[str, str], tmp_path: Path, role: str, ods: str, scopes: str, why: str
) -> None:
    run(env, "clients", "keygen", "--out", str(tmp_path / "k"), "--alg", "ES256")
    output = refused(
        env,
        *("clients", "add", "--client-id", "c1", "--role", role, "--ods", ods),
        *("--jwks", str(tmp_path / "k.jwks.json"), "--scopes", scopes),
    )
    assert why in " ".join(output.split())


def test_a_jwks_holding_a_private_key_or_an_http_url_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "clients", "keygen", "--out", str(tmp_path / "k"), "--alg", "ES256")
    pem = (tmp_path / "k.pem").read_bytes()

    leaked = {"keys": [{**private_key(pem).as_dict(private=True), "kid": "leaked"}]}
    (tmp_path / "leaked.json").write_text(json.dumps(leaked))
    base = (
        "clients",
        "add",
        "--client-id",
        "c2",
        "--role",
        "trust",
        "--ods",
        "RBA",
        "--scopes",
        "system/Task.rs",
    )
    assert "private key material" in refused(env, *base, "--jwks", str(tmp_path / "leaked.json"))
    assert "https" in refused(env, *base, "--jwks", "http://example.test/jwks.json")


@dataclass
class PublishedGateway:
    base_url: str
    settings: Settings
    app: FastAPI


@pytest.fixture
def published_gateway(database: Database, db: Database, tmp_path: Path) -> Iterator[PublishedGateway]:
    """A gateway whose published address is its real one, so the token URL can be fetched."""
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "gateway", public_base_url=f"http://127.0.0.1:{port}", audit_seal_seconds=0
    )
    app = create_app(settings, db=database)
    with RunningServer(app, port=port) as server:
        yield PublishedGateway(server.base_url, settings, app)


def test_the_integrator_flow_in_the_docs(
    published_gateway: PublishedGateway, env: dict[str, str], tmp_path: Path
) -> None:
    base_url, settings = published_gateway.base_url, published_gateway.settings
    run(env, "clients", "keygen", "--out", str(tmp_path / "epr"), "--alg", "RS512")
    run(
        env,
        *("clients", "add", "--client-id", "epr-rba", "--role", "trust", "--ods", "RBA"),
        *(
            "--jwks",
            str(tmp_path / "epr.jwks.json"),
            "--scopes",
            "system/MedicationRequest.c system/MedicationRequest.rs",
        ),
    )
    key = ("--client-id", "epr-rba", "--key", str(tmp_path / "epr.pem"), "--token-url", settings.token_url)
    token = printed(env, "token", *key, "--token-only")
    response = json.loads(printed(env, "token", *key, "--scope", "system/MedicationRequest.rs"))
    assert response["scope"] == "system/MedicationRequest.rs"
    assertion = printed(env, "token", *key, "--assertion-only")
    assert assertion.count(".") == 2
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        sent = http.post(
            "/fhir/$process-message",
            content=orjson.dumps(PrescriptionMessageBuilder().build(items=1)),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert sent.status_code == 200, sent.text
        assert http.get(sent.headers["location"]).status_code == 200
    # The same server under another name is not the token URL the gateway publishes: aud must match exactly.
    elsewhere = settings.token_url.replace("127.0.0.1", "localhost")
    assert "invalid_client" in refused(env, "token", *key[:4], "--token-url", elsewhere)


def test_rotating_the_gateway_key_keeps_earlier_tokens_valid_until_their_key_goes(
    published_gateway: PublishedGateway, env: dict[str, str], tmp_path: Path
) -> None:
    base_url, settings = published_gateway.base_url, published_gateway.settings
    run(env, "clients", "keygen", "--out", str(tmp_path / "epr"), "--alg", "ES384")
    run(
        env,
        *("clients", "add", "--client-id", "epr-rba", "--role", "trust", "--ods", "RBA"),
        *("--jwks", str(tmp_path / "epr.jwks.json"), "--scopes", "system/MedicationRequest.rs"),
    )
    key = ("--client-id", "epr-rba", "--key", str(tmp_path / "epr.pem"), "--token-url", settings.token_url)

    def status_with(token: str) -> int:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
            return http.get(f"/fhir/Bundle/{uuid.uuid4()}").status_code

    def kid_of(token: str) -> str:
        import base64

        header = token.split(".")[0]
        return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])

    first = printed(env, "token", *key, "--token-only")
    keys_env = {**env, "HOMECARE_DATA_DIR": str(settings.data_dir)}
    run(keys_env, "keys", "rotate")
    signing_keys = published_gateway.app.state.services.tokens.signing_keys
    assert signing_keys.refresh(), "a running gateway picks up a rotation (here at once)"
    second = printed(env, "token", *key, "--token-only")
    assert status_with(second) == status_with(first) == 404  # both verify; the Bundle is just not there
    rotate_signing_keys(settings.resolved_signing_keys_dir, now=datetime.now(UTC))
    assert signing_keys.refresh()
    third = printed(env, "token", *key, "--token-only")
    assert len({kid_of(first), kid_of(second), kid_of(third)}) == 3
    with httpx.Client(base_url=base_url) as http:
        published = {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]}
    assert published == {kid_of(second), kid_of(third)}
    assert status_with(first) == 401, "a token of a retired key is refused"


def test_the_signing_key_is_generated_owner_only_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    path = ensure_signing_key(folder, now=datetime.now(UTC))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert ensure_signing_key(folder, now=datetime.now(UTC)) == path, "generated once, then reused"
    assert SigningKeys(folder).jwks()["keys"][0]["kid"]
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="readable by others"):
        SigningKeys(folder)
    with pytest.raises(SigningKeyError, match="no signing key"):
        SigningKeys(tmp_path / "empty")


def test_production_refuses_development_defaults(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SIGNING_KEYS_DIR"):
        Settings(environment="production", public_base_url="https://gateway.example.nhs.uk")
    with pytest.raises(ValidationError, match="https"):
        Settings(environment="production", signing_keys_dir=tmp_path)
    ready = Settings(
        environment="production", signing_keys_dir=tmp_path, public_base_url="https://gateway.example.nhs.uk/"
    )
    assert ready.token_url == "https://gateway.example.nhs.uk/auth/token"


def test_production_does_not_generate_a_signing_key(tmp_path: Path, restore_logging: None) -> None:
    from gateway.server import prepare

    settings = Settings(
        environment="production",
        signing_keys_dir=tmp_path / "keys",
        public_base_url="https://gateway.example.nhs.uk",
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
    )
    with pytest.raises(SigningKeyError):
        prepare(settings)
    assert not (tmp_path / "keys").exists()


# The functions behind the commands, called directly: their results and their refusals.


def _serving(jwks: dict[str, object], asked: list[httpx.Request] | None = None) -> httpx.Client:
    """An HTTP client whose every GET is answered with this JWKS (a client's own web server)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if asked is not None:
            asked.append(request)
        return httpx.Response(200, json=jwks)

    return httpx.Client(transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    ("url", "development", "accepted"),
    [
        ("https://trust.example.nhs.uk/jwks.json", False, True),
        ("https:///jwks.json", False, False),
        ("http://127.0.0.1:8443/jwks.json", True, True),
        ("http://localhost/jwks.json", True, True),
        ("http://[::1]:8443/jwks.json", True, True),
        ("http://127.0.0.1:8443/jwks.json", False, False),
        ("http://localhost/jwks.json", False, False),
        ("http://trust.example.nhs.uk/jwks.json", True, False),
        ("ftp://127.0.0.1/jwks.json", True, False),
    ],
)
def test_a_jwks_url_is_https_or_plain_http_to_loopback_in_development(
    url: str, development: bool, accepted: bool
) -> None:
    if accepted:
        assert check_jwks_url(url, allow_http_loopback=development) == url
    else:
        with pytest.raises(
            KeySetError, match=r"^a JWKS URL must be https \(plain http only to loopback in development\)$"
        ):
            check_jwks_url(url, allow_http_loopback=development)


def test_a_jwks_option_is_a_url_fetched_now_or_a_file_read_now(tmp_path: Path) -> None:
    jwks = generate_client_key("ES256").jwks
    asked: list[httpx.Request] = []
    with _serving(jwks, asked) as http:
        for url in ("https://trust.example.nhs.uk/jwks.json", "http://127.0.0.1:8443/jwks.json"):
            assert key_source(url, http=http, allow_http_loopback=True) == KeySource(jwks=None, jwks_url=url)
        assert [str(request.url) for request in asked] == [
            "https://trust.example.nhs.uk/jwks.json",
            "http://127.0.0.1:8443/jwks.json",
        ], "each URL is fetched to check it"
        with pytest.raises(KeySetError, match="must be https"):
            key_source("http://127.0.0.1:8443/jwks.json", http=http, allow_http_loopback=False)
    with _serving({"keys": []}) as http, pytest.raises(KeySetError, match="at least one key"):
        key_source("https://trust.example.nhs.uk/jwks.json", http=http, allow_http_loopback=False)
    path = tmp_path / "trust.jwks.json"
    path.write_text(json.dumps(jwks))
    with httpx.Client() as http:
        assert key_source(str(path), http=http, allow_http_loopback=False) == KeySource(
            jwks=jwks, jwks_url=None
        )
        with pytest.raises(KeySetError, match=rf"^{tmp_path / 'missing.json'} is not a readable JWKS file: "):
            key_source(str(tmp_path / "missing.json"), http=http, allow_http_loopback=False)
        path.write_text("not json")
        with pytest.raises(KeySetError, match=rf"^{path} is not a readable JWKS file: Expecting value"):
            key_source(str(path), http=http, allow_http_loopback=False)
        path.write_text(json.dumps({"keys": [{"kty": "EC"}]}))
        with pytest.raises(KeySetError, match="has no 'kid'"):
            key_source(str(path), http=http, allow_http_loopback=False)


def test_new_client_keys_replace_the_old_ones_whole_and_clients_list_by_id(db: Database) -> None:
    added, rotated = datetime(2026, 11, 30, 7, tzinfo=UTC), datetime(2026, 11, 30, 8, 15, tzinfo=UTC)
    first = generate_client_key("ES256").jwks
    with db.write() as session:
        for client_id in ("zz-last", "aa-first"):
            add_client(
                session,
                client_id=client_id,
                role=Role.TRUST,
                ods_code="RBC",
                scopes="system/Task.rs",
                keys=KeySource(jwks=first, jwks_url=None),
                now=added,
            )
    url = "https://trust.example.nhs.uk/jwks.json"
    with db.write() as session:
        replace_client_keys(session, "zz-last", keys=KeySource(jwks=None, jwks_url=url), now=rotated)
    with db.read() as session:
        listed = list_clients(session)
    ids = [client.client_id for client in listed]
    assert ids == sorted(ids) and {"aa-first", "zz-last"} <= set(ids)
    by_id = {client.client_id: client for client in listed}
    assert (by_id["zz-last"].jwks, by_id["zz-last"].jwks_url) == (None, url)
    assert (by_id["zz-last"].created_at, by_id["zz-last"].updated_at) == (utc_text(added), utc_text(rotated))
    second = generate_client_key("ES384").jwks
    with db.write() as session:
        replace_client_keys(session, "zz-last", keys=KeySource(jwks=second, jwks_url=None), now=rotated)
    with db.read() as session:
        again = next(client for client in list_clients(session) if client.client_id == "zz-last")
    assert (again.jwks, again.jwks_url) == (second, None)
    assert by_id["aa-first"].jwks == first and by_id["aa-first"].updated_at == utc_text(added)
    with db.write() as session, pytest.raises(ClientNotFoundError, match=r"^no client nobody$"):
        replace_client_keys(session, "nobody", keys=KeySource(jwks=second, jwks_url=None), now=rotated)


def test_a_rotation_keeps_the_new_key_and_the_one_before_it(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    made = [rotate_signing_keys(folder, now=datetime(2026, 11, 30, hour, tzinfo=UTC)) for hour in (6, 7, 8)]
    assert key_files(folder) == made[1:]
    assert made[-1].name == "signing-20261130T080000000000Z.pem"
    kept = rotate_signing_keys(folder, now=datetime(2026, 11, 30, 9, tzinfo=UTC), keep=3)
    assert key_files(folder) == [*made[1:], kept]


def test_a_token_request_posts_the_client_credentials_grant_with_the_assertion() -> None:
    posted: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(200, json={"access_token": "t"})

    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        for scope in ("system/Task.rs", None, ""):
            response = request_access_token(
                http, token_url="https://gateway.example.nhs.uk/auth/token", assertion="a.b.c", scope=scope
            )
            assert response.json() == {"access_token": "t"}
    forms = [parse_qs(request.content.decode(), keep_blank_values=True) for request in posted]
    grant = {
        "grant_type": ["client_credentials"],
        "client_assertion_type": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"],
        "client_assertion": ["a.b.c"],
    }
    assert forms == [{**grant, "scope": ["system/Task.rs"]}, grant, grant]
    assert {(request.method, str(request.url)) for request in posted} == {
        ("POST", "https://gateway.example.nhs.uk/auth/token")
    }
    assert {request.headers["content-type"] for request in posted} == {"application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        (ECKey.generate_key("P-256"), "ES256"),
        (ECKey.generate_key("P-384"), "ES384"),
        (RSAKey.generate_key(2048), "RS512"),
    ],
)
def test_an_integrators_key_signs_with_the_algorithm_of_its_type_and_curve(key: Key, algorithm: str) -> None:
    assert default_algorithm(key) == algorithm


def test_a_key_file_without_a_private_key_is_refused_by_name(tmp_path: Path) -> None:
    pair = generate_client_key("ES256")
    path = tmp_path / "client.pem"
    path.write_bytes(pair.private_pem)
    assert load_private_key(path).thumbprint() == pair.kid
    as_jwk = tmp_path / "client.jwk.json"  # the same key as a private JWK, as some tools write it
    as_jwk.write_text("\n  " + json.dumps(load_private_key(path).as_dict(private=True)))
    assert load_private_key(as_jwk).thumbprint() == pair.kid
    with pytest.raises(ValueError, match=r"^not an RSA or EC private key$"):
        private_key(b"-----BEGIN CERTIFICATE-----")
    public = tmp_path / "public.json"
    public.write_text(json.dumps(pair.jwks["keys"][0]))
    with pytest.raises(ValueError, match=rf"^{public} does not hold an RSA or EC private key$"):
        load_private_key(public)
    with pytest.raises(FileNotFoundError):
        load_private_key(tmp_path / "missing.pem")


@pytest.mark.parametrize(
    ("algorithm", "kty", "size"),
    [
        ("RS512", "RSA", 4096),
        ("RS384", "RSA", 2048),
        ("RS256", "RSA", 2048),
        ("ES384", "EC", "P-384"),
        ("ES256", "EC", "P-256"),
    ],
)
def test_a_client_key_pair_has_the_size_or_curve_of_its_algorithm_and_a_public_signing_jwks(
    algorithm: str, kty: str, size: int | str
) -> None:
    pair = generate_client_key(algorithm)
    key = private_key(pair.private_pem)
    assert (key.public_key.key_size if isinstance(key, RSAKey) else key.curve_name) == size
    (public,) = pair.jwks["keys"]
    assert (public["kty"], public["alg"], public["use"], public["kid"]) == (
        kty,
        algorithm,
        "sig",
        key.thumbprint(),
    )
    assert pair.kid == key.thumbprint() and "d" not in public
    assert generate_client_key(algorithm, kid="trust-2026").jwks["keys"][0]["kid"] == "trust-2026"


def test_a_client_key_of_another_algorithm_is_refused_with_the_list() -> None:
    with pytest.raises(ValueError, match=r"^choose one of RS512, RS384, ES384, RS256, ES256$"):
        generate_client_key("HS256")
