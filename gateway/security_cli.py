"""Security commands: `clients ...`, `keys rotate`, `audit seal|verify` and the integrators' `token`."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from auth import audit as audit_log
from auth.assertion import (
    ASSERTION_ALGORITHMS,
    default_algorithm,
    generate_client_key,
    load_private_key,
    request_access_token,
    sign_assertion,
)
from auth.clients import (
    ClientRegistryError,
    KeySource,
    add_client,
    disable_client,
    key_source,
    list_clients,
    replace_client_keys,
)
from auth.identity import Role
from auth.models import Client
from auth.signing import rotate_signing_keys
from fhir_profiles.identifiers import is_ods_code
from gateway.clock import system_clock
from gateway.operator_errors import OperatorError
from gateway.security import http_for_key_sets
from gateway.settings import Settings
from gateway.store.audit import seal_audit_log
from gateway.store.db import Database
from gateway.store.providers import list_providers

clients_app = typer.Typer(
    no_args_is_help=True, help="Machine clients (trust and provider systems) and their keys."
)
keys_app = typer.Typer(no_args_is_help=True, help="The gateway's own signing keys.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
console = Console()
ROLES = tuple(role.value for role in Role if role is not Role.CLINICIAN)


def _database(settings: Settings) -> Database:
    database = Database(settings.resolved_database_url, pool_size=2)
    database.migrate()
    return database


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(1)


def _record_operator_change(session: Session, action: audit_log.Action, client_id: str) -> None:
    # Registry changes are made at the console, not through the API: the actor is the operator.
    record = audit_log.AuditRecord(
        occurred_at=system_clock(),
        action=action,
        outcome=audit_log.Outcome.SUCCESS,
        role="operator",
        resource_type="Client",
        resource_id=client_id,
    )
    audit_log.append(session.connection(), [record])


def _key_source(value: str, settings: Settings) -> KeySource:
    with http_for_key_sets(settings) as http:
        return key_source(value, http=http, allow_http_loopback=settings.is_development)


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Option("--client-id", help="The id the client puts in iss and sub.")],
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")],
    ods: Annotated[str, typer.Option("--ods", help="The organisation the client acts for (ODS code).")],
    jwks: Annotated[str, typer.Option(help="The client's public keys: a JWKS file, or an https URL.")],
    scopes: Annotated[
        str, typer.Option(help='Space-separated SMART scopes, e.g. "system/MedicationRequest.c".')
    ],
) -> None:
    """Register a machine client. A provider client's ODS code must be a registered provider."""
    if role not in ROLES:
        raise typer.BadParameter(f"choose one of {', '.join(ROLES)}", param_hint="--role")
    if not is_ods_code(ods):
        raise typer.BadParameter("an ODS code is 3-12 capital letters and digits", param_hint="--ods")
    settings = Settings()
    database = _database(settings)
    try:
        source = _key_source(jwks, settings)
        with database.write() as session:
            if role == Role.PROVIDER and ods not in {p.ods_code for p in list_providers(session)}:
                raise ClientRegistryError(f"{ods} is not a registered provider: run 'providers add' first")
            add_client(
                session,
                client_id=client_id,
                role=Role(role),
                ods_code=ods,
                scopes=scopes,
                keys=source,
                now=system_clock(),
            )
            _record_operator_change(session, audit_log.Action.REGISTER_CLIENT, client_id)
    except ClientRegistryError as exc:
        raise _fail(str(exc)) from None
    finally:
        database.dispose()
    console.print(f"Client {client_id} registered ({role} for {ods}).")


@clients_app.command("list")
def clients_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The registered clients."""
    database = _database(Settings())
    with database.read() as session:
        clients = list_clients(session)
    database.dispose()

    def keys(client: Client) -> list[str] | str:
        return client.jwks_url or [str(key.get("kid")) for key in (client.jwks or {}).get("keys", [])]

    if as_json:
        rows = [
            {
                "client_id": client.client_id,
                "role": client.role,
                "ods": client.ods_code,
                "scopes": client.scopes,
                "keys": keys(client),
                "enabled": client.enabled,
            }
            for client in clients
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("client id", "role", "ODS", "scopes", "keys", "enabled")
    for client in clients:
        shown = keys(client)
        table.add_row(
            client.client_id,
            client.role,
            client.ods_code,
            " ".join(client.scopes),
            shown if isinstance(shown, str) else ", ".join(shown),
            "yes" if client.enabled else "no",
        )
    console.print(table)


@clients_app.command("disable")
def clients_disable(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Refuse the client new tokens (tokens already issued expire within their lifetime)."""
    database = _database(Settings())
    try:
        with database.write() as session:
            disable_client(session, client_id, now=system_clock())
            _record_operator_change(session, audit_log.Action.DISABLE_CLIENT, client_id)
    except ClientRegistryError as exc:
        raise _fail(str(exc)) from None
    finally:
        database.dispose()
    console.print(f"Client {client_id} disabled.")


@clients_app.command("rotate-key")
def clients_rotate_key(
    client_id: Annotated[str, typer.Option("--client-id", help="The client id.")],
    jwks: Annotated[
        str, typer.Option(help="The new JWKS file or https URL (list old and new keys to overlap).")
    ],
) -> None:
    """Replace a client's public keys."""
    settings = Settings()
    database = _database(settings)
    try:
        source = _key_source(jwks, settings)
        with database.write() as session:
            replace_client_keys(session, client_id, keys=source, now=system_clock())
            _record_operator_change(session, audit_log.Action.ROTATE_CLIENT_KEY, client_id)
    except ClientRegistryError as exc:
        raise _fail(str(exc)) from None
    finally:
        database.dispose()
    console.print(f"Client {client_id} now verifies with the keys from {jwks}.")


@clients_app.command("keygen")
def clients_keygen(
    out: Annotated[Path, typer.Option(help="File name stem: writes STEM.pem (private) and STEM.jwks.json.")],
    alg: Annotated[str, typer.Option(help=f"One of {', '.join(ASSERTION_ALGORITHMS)}.")] = "RS512",
    kid: Annotated[str | None, typer.Option(help="Key id (default: the key's thumbprint).")] = None,
) -> None:
    """Make a client key pair: the private key for the client, the JWKS to register with the gateway."""
    try:
        pair = generate_client_key(alg, kid=kid)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--alg") from None
    private, public = out.with_suffix(".pem"), out.with_suffix(".jwks.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pair.private_pem)
    public.write_text(json.dumps(pair.jwks, indent=2) + "\n", encoding="utf-8")
    console.print(f"Private key {private} (keep it secret), public JWKS {public}, kid {pair.kid} ({alg}).")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new gateway signing key; the previous one stays published until its tokens expire."""
    settings = Settings()
    path = rotate_signing_keys(settings.resolved_signing_keys_dir, now=system_clock())
    console.print(f"New signing key {path}; running gateways pick it up within seconds.")


@audit_app.command("seal")
def audit_seal() -> None:
    """Chain every unsealed audit row now (the server does this by itself every few seconds)."""
    database = _database(Settings())
    sealed = seal_audit_log(database)
    database.dispose()
    console.print(f"Sealed {sealed} audit rows.")


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        list[str] | None, typer.Option(help="A head printed by an earlier verify (SEQ:HASH), repeatable.")
    ] = None,
    max_unsealed_seconds: Annotated[
        float | None, typer.Option(help="Fail when a row is unsealed for longer (default from settings).")
    ] = None,
) -> None:
    """Check the audit chain: names the first edited, deleted or reordered row; exit 1 if any."""
    settings = Settings()
    try:
        anchors = [audit_log.ChainHead.parse(value) for value in anchor or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--anchor") from None
    bound = max_unsealed_seconds if max_unsealed_seconds is not None else settings.audit_max_unsealed_seconds
    database = _database(settings)
    with database.read() as session:
        result = audit_log.verify(
            session, now=system_clock(), max_unsealed_age=timedelta(seconds=bound), anchors=anchors
        )
    database.dispose()
    if not result.ok:
        raise _fail(f"Audit log check FAILED: {result.problem}")
    console.print(
        f"Audit log intact: {result.sealed} sealed rows, {result.unsealed} waiting to be sealed. "
        f"Head {result.head or 'none'} (record it elsewhere; pass it back with --anchor)."
    )


def token(
    client_id: Annotated[str, typer.Option("--client-id", help="Your client id (iss and sub).")],
    key: Annotated[Path, typer.Option(help="Your private key (PEM or JWK JSON).")],
    token_url: Annotated[str, typer.Option(help="The gateway's token URL (the assertion's aud).")],
    kid: Annotated[
        str | None, typer.Option(help="The registered key id (default: the key's thumbprint).")
    ] = None,
    alg: Annotated[
        str | None, typer.Option(help="Signing algorithm (default RS512 for RSA, ES384/ES256 for EC).")
    ] = None,
    scope: Annotated[str | None, typer.Option(help="Scopes to ask for (default: all granted).")] = None,
    assertion_only: Annotated[
        bool, typer.Option("--assertion-only", help="Print the signed assertion instead of fetching a token.")
    ] = False,
    token_only: Annotated[
        bool, typer.Option("--token-only", help="Print just the access token (for TOKEN=$(...)).")
    ] = False,
) -> None:
    """Sign a client assertion with your key and get an access token (prints the token response JSON)."""
    try:
        private_key = load_private_key(key)
    except OSError as exc:
        raise OperatorError(
            f"Cannot read the key file {key} ({exc.strerror}): give your private key with --key"
        ) from None
    except ValueError as exc:
        raise OperatorError(f"{exc}: give your private key (PEM or JWK) with --key") from None
    assertion = sign_assertion(
        key=private_key,
        kid=kid or private_key.thumbprint(),
        client_id=client_id,
        token_url=token_url,
        now=int(time.time()),
        algorithm=alg or default_algorithm(private_key),
    )
    if assertion_only:
        typer.echo(assertion)
        return
    try:
        with httpx.Client(timeout=10) as http:
            response = request_access_token(http, token_url=token_url, assertion=assertion, scope=scope)
    except httpx.HTTPError:
        raise OperatorError(
            f"No answer from the gateway at {token_url}: is it running, and is --token-url right?"
        ) from None
    if response.status_code != 200:
        typer.echo(response.text, err=True)
        raise typer.Exit(1)
    typer.echo(response.json()["access_token"] if token_only else response.text)
