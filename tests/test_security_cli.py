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

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from typer.testing import CliRunner

from auth.signing import SigningKeyError, SigningKeys, ensure_signing_key, rotate_signing_keys
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
    from auth.assertion import private_key

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
