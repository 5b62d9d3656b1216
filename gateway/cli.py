"""`homecare-gateway`: run the gateway, migrate its database, manage providers, export the OpenAPI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapters.registry import AdapterRegistryError, available_schemes, validate_settings
from gateway.clock import system_clock
from gateway.kpi_cli import kpi_app
from gateway.operator_errors import advice
from gateway.security_cli import audit_app, clients_app, keys_app, token
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.models import Provider
from gateway.store.providers import (
    ProviderExists,
    ProviderNotFound,
    add_provider,
    list_providers,
    update_provider,
)
from gateway.users_cli import users_app

app = typer.Typer(no_args_is_help=True, help="The homecare e-prescribing gateway.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
providers_app = typer.Typer(no_args_is_help=True, help="Homecare providers and their adapters.")
outbox_app = typer.Typer(no_args_is_help=True, help="Messages waiting for providers.")
app.add_typer(db_app, name="db")
app.add_typer(providers_app, name="providers")
app.add_typer(outbox_app, name="outbox")
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(kpi_app, name="kpi")
app.command()(token)
console = Console()


def _database(settings: Settings) -> Database:
    return Database(settings.resolved_database_url, pool_size=2)


AdminListen = Annotated[
    str | None,
    typer.Option(
        help="host:port of the admin listener (/metrics), or off; default HOMECARE_ADMIN_LISTEN.",
        show_default=False,
    ),
]


def _admin_listen(value: str | None) -> str | None:
    from gateway.settings import listen_address

    if value is not None and value.strip().lower() not in ("", "off") and listen_address(value) is None:
        raise typer.BadParameter("host:port (e.g. 127.0.0.1:9465) or off", param_hint="--admin-listen")
    return value


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API processes (each also dispatches).")] = 1,
    admin_listen: AdminListen = None,
) -> None:
    """The API and web pages in one process (or several with --workers); migrates the database first.
    /metrics is on the admin listener (HOMECARE_ADMIN_LISTEN, 127.0.0.1:9464 by default), not the API."""
    from gateway.server import run_server

    run_server(host=host, port=port, workers=workers, admin_listen=_admin_listen(admin_listen))


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the gateway.")] = 8000,
    prescriptions: Annotated[int, typer.Option(min=0, help="Sample prescriptions to send.")] = 5,
    trickle_seconds: Annotated[
        float, typer.Option(min=0, help="Then one more prescription this often (0: none).")
    ] = 15.0,
    pace: Annotated[
        float,
        typer.Option(min=0.01, help="Multiply the simulated providers' waits (0.25: four times faster)."),
    ] = 1.0,
) -> None:
    """The gateway on the embedded database with demo providers and sample prescriptions."""
    from gateway.demo import run_demo

    run_demo(port=port, prescriptions=prescriptions, trickle_seconds=trickle_seconds, pace=pace)


@app.command()
def worker(admin_listen: AdminListen = None) -> None:
    """A dispatcher alone: sends due messages to providers (run any number, on any machines).
    Its /metrics is on HOMECARE_ADMIN_LISTEN too: beside `serve` on one machine, give it another port."""
    from gateway.server import run_worker

    run_worker(admin_listen=_admin_listen(admin_listen))


@outbox_app.command("status")
def outbox_status() -> None:
    """Depth, due messages, age of the oldest and dead letters by provider."""
    from gateway.store.outbox import stats

    settings = Settings()
    database = _database(settings)
    database.migrate()
    figures = stats(database, now=system_clock())
    console.print(
        f"depth {figures.depth}, due {figures.due}, oldest due {figures.oldest_due_age_seconds:.1f} s, "
        f"dead {figures.dead}, held for pull {figures.held}"
    )
    for provider, count in sorted(figures.by_provider_dead.items()):
        console.print(f"  dead for {provider}: {count}")


@outbox_app.command("redrive")
def outbox_redrive(
    prescription: Annotated[str | None, typer.Option(help="Only this prescription (gateway id).")] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider's ODS code.")] = None,
) -> None:
    """Send dead messages again (after fixing the provider or its settings)."""
    from gateway.domain.context import Context
    from gateway.domain.delivery import redrive
    from gateway.notify.service import notify_status_change

    settings = Settings()
    database = _database(settings)
    database.migrate()
    context = Context(database, listener=notify_status_change)
    count = redrive(context, prescription_id=prescription, provider_ods=provider)
    console.print(f"{count} message(s) queued again.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Run the database migrations up to the newest."""
    settings = Settings()
    database = _database(settings)
    database.migrate()
    database.dispose()
    console.print(f"Database is up to date ({database.url.render_as_string(hide_password=True)}).")


def _settings_from_options(base_url: str | None, setting: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if base_url is not None:
        values["base_url"] = base_url
    for item in setting or []:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--setting")
        values[key] = value
    return values


def _check_adapter(adapter: str) -> str:
    installed = available_schemes()
    if adapter not in installed:
        raise typer.BadParameter(
            f"choose one of {', '.join(installed)} (installed adapters)", param_hint="--adapter"
        )
    return adapter


def _check_settings(provider: Provider) -> None:
    """The provider's adapter settings must satisfy its adapter, or nothing is saved."""
    try:
        validate_settings(provider.adapter, provider.settings)
    except AdapterRegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _check_ods(ods: str) -> str:
    from fhir_profiles.identifiers import is_ods_code

    if not is_ods_code(ods):
        raise typer.BadParameter("an ODS code is 3-12 capital letters and digits", param_hint="--ods")
    return ods


@providers_app.command("add")
def providers_add(
    ods: Annotated[str, typer.Option("--ods", help="The provider's ODS code, e.g. VNCEL.")],
    name: Annotated[str, typer.Option(help="The provider's name.")],
    adapter: Annotated[str, typer.Option(help="An installed adapter, e.g. fhir-rest.")],
    base_url: Annotated[str | None, typer.Option(help="Base URL of the provider's endpoint.")] = None,
    setting: Annotated[list[str] | None, typer.Option(help="Adapter setting KEY=VALUE (repeatable).")] = None,
) -> None:
    """Register a homecare provider and its adapter settings."""
    settings = Settings()
    database = _database(settings)
    database.migrate()
    try:
        with database.write() as session:
            provider = add_provider(
                session,
                ods_code=_check_ods(ods),
                name=name,
                adapter=_check_adapter(adapter),
                settings=_settings_from_options(base_url, setting),
                now=system_clock(),
            )
            _check_settings(provider)
    except ProviderExists:
        console.print(f"[red]Provider {ods} is already registered; use 'providers update'.[/red]")
        raise typer.Exit(1) from None
    console.print(f"Provider {ods} registered ({adapter}).")


@providers_app.command("update")
def providers_update(
    ods: Annotated[str, typer.Option("--ods", help="The provider's ODS code.")],
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    adapter: Annotated[str | None, typer.Option(help="New adapter.")] = None,
    base_url: Annotated[str | None, typer.Option(help="New base URL.")] = None,
    setting: Annotated[list[str] | None, typer.Option(help="Adapter setting KEY=VALUE (repeatable).")] = None,
    enable: Annotated[bool, typer.Option("--enable", help="Accept orders for this provider again.")] = False,
) -> None:
    """Change a provider's name, adapter or settings, or enable it again."""
    settings = Settings()
    database = _database(settings)
    database.migrate()
    changes = _settings_from_options(base_url, setting)
    try:
        with database.write() as session:
            provider = update_provider(
                session,
                ods,
                now=system_clock(),
                name=name,
                adapter=_check_adapter(adapter) if adapter else None,
                settings=changes or None,
                enabled=True if enable else None,
            )
            _check_settings(provider)
    except ProviderNotFound:
        console.print(f"[red]No provider {ods}.[/red]")
        raise typer.Exit(1) from None
    console.print(f"Provider {ods} updated.")


@providers_app.command("disable")
def providers_disable(ods: Annotated[str, typer.Argument(help="The provider's ODS code.")]) -> None:
    """Stop accepting new orders for a provider (orders already accepted are still delivered)."""
    settings = Settings()
    database = _database(settings)
    database.migrate()
    try:
        with database.write() as session:
            update_provider(session, ods, now=system_clock(), enabled=False)
    except ProviderNotFound:
        console.print(f"[red]No provider {ods}.[/red]")
        raise typer.Exit(1) from None
    console.print(f"Provider {ods} disabled.")


@providers_app.command("list")
def providers_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The registered providers."""
    settings = Settings()
    database = _database(settings)
    database.migrate()
    with database.read() as session:
        providers = list_providers(session)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "ods": p.ods_code,
                        "name": p.name,
                        "adapter": p.adapter,
                        "enabled": p.enabled,
                        "settings": p.settings,
                    }
                    for p in providers
                ],
                indent=2,
            )
        )
        return
    table = Table("ODS", "name", "adapter", "enabled", "settings")
    for provider in providers:
        table.add_row(
            provider.ods_code,
            provider.name,
            provider.adapter,
            "yes" if provider.enabled else "no",
            json.dumps(provider.settings),
        )
    console.print(table)


@app.command()
def openapi(
    output: Annotated[Path, typer.Option(help="Where to write the document.")] = Path("openapi/openapi.json"),
    check: Annotated[bool, typer.Option("--check", help="Fail if the file differs from the code.")] = False,
) -> None:
    """Export the OpenAPI document (or check that the committed one is current)."""
    from gateway.openapi_export import render_openapi

    rendered = render_openapi()
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != rendered:
            console.print(f"[red]{output} is out of date: run 'homecare-gateway openapi'.[/red]")
            raise typer.Exit(1)
        console.print(f"{output} is current.")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(rendered, encoding="utf-8")
    console.print(f"Wrote {output}.")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except Exception as exc:
        line = advice(exc)
        if line is None:
            raise
        typer.echo(f"Error: {line}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
