"""`homecare-gateway demo`: the gateway on SQLite, demo providers, a demo trust and sample prescriptions."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import orjson
import uvicorn
from rich.console import Console
from rich.table import Table

from auth.assertion import generate_client_key, load_private_key, request_access_token, sign_assertion
from auth.clients import KeySource, add_client, get_client
from auth.identity import Role
from auth.scopes import ROLE_CEILINGS
from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.server import prepare
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider, list_providers

console = Console()

DEMO_TRUST = "RBA"
DEMO_CLIENT = "demo-trust-rba"
DEMO_CLIENT_ALGORITHM = "ES384"
DEMO_PROVIDERS = (
    ("VNCEL", "Demo Homecare Services (FHIR REST)", "fhir-rest"),
    ("VNFKT", "Demo Specialist Pharmacy (FHIR REST)", "fhir-rest"),
)


def _register_demo_providers(database: Database) -> None:
    with database.write() as session:
        known = {provider.ods_code for provider in list_providers(session)}
        for ods, name, adapter in DEMO_PROVIDERS:
            if ods not in known:
                add_provider(
                    session, ods_code=ods, name=name, adapter=adapter, settings={}, now=system_clock()
                )


def _register_demo_trust(database: Database, data_dir: Path) -> Path:
    """A trust client for the demo: its key pair in the data folder, its public key registered."""
    key_path = data_dir / f"{DEMO_CLIENT}.pem"
    if not key_path.exists():
        pair = generate_client_key(DEMO_CLIENT_ALGORITHM)
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pair.private_pem)
        key_path.with_suffix(".jwks.json").write_text(json.dumps(pair.jwks, indent=2), encoding="utf-8")
    jwks = json.loads(key_path.with_suffix(".jwks.json").read_text(encoding="utf-8"))
    with database.write() as session:
        if get_client(session, DEMO_CLIENT) is None:
            add_client(
                session,
                client_id=DEMO_CLIENT,
                role=Role.TRUST,
                ods_code=DEMO_TRUST,
                scopes=" ".join(ROLE_CEILINGS[Role.TRUST]),
                keys=KeySource(jwks=jwks, jwks_url=None),
                now=system_clock(),
            )
    return key_path


def _demo_token(token_url: str, key_path: Path) -> str:
    """An access token the way any trust system gets one: a signed assertion, then the token endpoint."""
    key = load_private_key(key_path)
    assertion = sign_assertion(
        key=key, kid=key.thumbprint(), client_id=DEMO_CLIENT, token_url=token_url, now=int(time.time())
    )
    with httpx.Client(timeout=10) as http:
        response = request_access_token(http, token_url=token_url, assertion=assertion)
    response.raise_for_status()
    return str(response.json()["access_token"])


def _send_samples(base_url: str, token: str, count: int) -> None:
    builder = PrescriptionMessageBuilder(sender_ods=DEMO_TRUST)
    table = Table("prescription ID", "provider", "items", "HTTP", "gateway id")
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        for number in range(count):
            ods = DEMO_PROVIDERS[number % len(DEMO_PROVIDERS)][0]
            message = builder.build(items=1 + number % 3, performer_ods=ods)
            response = client.post(
                "/fhir/$process-message",
                content=orjson.dumps(message),
                headers={"Content-Type": "application/fhir+json"},
            )
            short_form = message["entry"][1]["resource"]["groupIdentifier"]["value"]
            location = response.headers.get("location", "-")
            table.add_row(short_form, ods, str(1 + number % 3), str(response.status_code), location)
    console.print(table)


def _print_guide(base_url: str, token_url: str, key_path: Path, data_dir: Path) -> None:
    example = Path("examples/prescription-order.json")
    console.print(
        f"""
[bold]Homecare gateway demo is running[/bold] (data in {data_dir}, Ctrl-C to stop)

  API documentation   {base_url}/docs
  Capability          curl {base_url}/fhir/metadata
  Demo trust client   {DEMO_CLIENT} (ODS {DEMO_TRUST}), private key {key_path}

Get an access token (valid 5 minutes) as the demo trust system:
  TOKEN=$(homecare-gateway token --token-only --client-id {DEMO_CLIENT} --key {key_path} \\
          --token-url {token_url})
Send a prescription:
  curl -i -X POST {base_url}/fhir/\\$process-message \\
       -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/fhir+json' \\
       --data-binary @{example}
Read it back: follow the Location header, e.g.
  curl -H "Authorization: Bearer $TOKEN" {base_url}/fhir/Bundle/<id>
""",
        soft_wrap=True,
    )


def run_demo(*, port: int, prescriptions: int) -> None:
    if "HOMECARE_DATA_DIR" not in os.environ and "DATABASE_URL" not in os.environ:
        os.environ["HOMECARE_DATA_DIR"] = "var/demo"
    base_url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("HOMECARE_PUBLIC_BASE_URL", base_url)
    settings = Settings()
    prepare(settings)
    database = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
    _register_demo_providers(database)
    key_path = _register_demo_trust(database, settings.data_dir)

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, db=database), host="127.0.0.1", port=port, log_config=None, access_log=False
        )
    )

    def after_start() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.05)
        _send_samples(base_url, _demo_token(settings.token_url, key_path), prescriptions)
        _print_guide(base_url, settings.token_url, key_path, settings.data_dir)

    threading.Thread(target=after_start, name="demo-samples", daemon=True).start()
    server.run()
    database.dispose()
