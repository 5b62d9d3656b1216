"""`homecare-gateway demo`: the gateway on SQLite, demo providers, a demo trust and sample prescriptions."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import orjson
import uvicorn
from rich.console import Console
from rich.table import Table

from fhir_profiles.builder import PrescriptionMessageBuilder
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.server import prepare
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider, list_providers

console = Console()

DEMO_TRUST = "RBA"
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


def _print_guide(base_url: str, token: str, data_dir: Path) -> None:
    example = Path("examples/prescription-order.json")
    console.print(
        f"""
[bold]Homecare gateway demo is running[/bold] (data in {data_dir}, Ctrl-C to stop)

  API documentation   {base_url}/docs
  Capability          curl {base_url}/fhir/metadata
  Development token   {token}

Send a prescription:
  curl -i -X POST {base_url}/fhir/\\$process-message \\
       -H 'Authorization: Bearer {token}' -H 'Content-Type: application/fhir+json' \\
       --data-binary @{example}
Read it back: follow the Location header, e.g.
  curl -H 'Authorization: Bearer {token}' {base_url}/fhir/Bundle/<id>
"""
    )


def run_demo(*, port: int, prescriptions: int) -> None:
    if "HOMECARE_DATA_DIR" not in os.environ and "DATABASE_URL" not in os.environ:
        os.environ["HOMECARE_DATA_DIR"] = "var/demo"
    settings = Settings()
    token = prepare(settings)
    assert token is not None, "the demo runs in development mode"
    settings = Settings()
    database = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
    _register_demo_providers(database)

    base_url = f"http://127.0.0.1:{port}"
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
        _send_samples(base_url, token, prescriptions)
        _print_guide(base_url, token, settings.data_dir)

    threading.Thread(target=after_start, name="demo-samples", daemon=True).start()
    server.run()
    database.dispose()
