"""`homecare-gateway users ...`: the people who sign in to the clinician pages (local accounts)."""

from __future__ import annotations

import json
import secrets
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gateway.clock import system_clock
from gateway.domain import people
from gateway.settings import Settings
from gateway.store.db import Database

users_app = typer.Typer(no_args_is_help=True, help="People who sign in to the clinician pages.")
console = Console()

PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of standard input.")
]
Generate = Annotated[bool, typer.Option("--generate", help="Make up a strong password and print it once.")]


def _database() -> Database:
    database = Database(Settings().resolved_database_url, pool_size=2)
    database.migrate()
    return database


def _password(from_stdin: bool, generate: bool) -> tuple[str, bool]:
    """The new password, and whether to print it (only a generated one is ever printed)."""
    if generate:
        return secrets.token_urlsafe(15), True
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True), False


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/red]")
    return typer.Exit(1)


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Option(help="What the person types to sign in (lower case).")],
    name: Annotated[str, typer.Option(help="The person's name, as the pages show it.")],
    ods: Annotated[str, typer.Option("--ods", help="The trust the person works for (ODS code).")],
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
) -> None:
    """Add a local account: a clinician of one trust, who sees only that trust's prescriptions."""
    password, show = _password(password_stdin, generate)
    database = _database()
    try:
        people.add_user(
            database,
            username=username,
            display_name=name,
            ods_code=ods,
            password=password,
            clock=system_clock,
        )
    except people.AccountError as exc:
        raise _fail(f"Not added: {exc}.") from None
    finally:
        database.dispose()
    console.print(f"User {username} added for {ods}.")
    if show:
        typer.echo(f"Password (shown once): {password}")


@users_app.command("list")
def users_list(
    ods: Annotated[str | None, typer.Option("--ods", help="Only this trust's people.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The accounts, with whether each is enabled, locked, and when it last signed in."""
    database = _database()
    try:
        users = people.list_users(database, ods_code=ods)
    finally:
        database.dispose()
    now = system_clock()
    rows = [
        {
            "username": user.username,
            "name": user.display_name,
            "ods": user.ods_code,
            "sign_in": "oidc" if user.oidc_subject else "password",
            "enabled": user.enabled,
            "locked": bool(user.locked_until and user.locked_until > now),
            "last_sign_in": user.last_sign_in_at.isoformat() if user.last_sign_in_at else None,
        }
        for user in users
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("username", "name", "ODS", "sign-in", "enabled", "locked", "last sign-in")
    for row in rows:
        table.add_row(
            str(row["username"]),
            str(row["name"]),
            str(row["ods"]),
            str(row["sign_in"]),
            "yes" if row["enabled"] else "no",
            "yes" if row["locked"] else "no",
            str(row["last_sign_in"] or "-"),
        )
    console.print(table)


def _set_enabled(username: str, *, enabled: bool) -> None:
    database = _database()
    try:
        people.set_enabled(database, username=username, enabled=enabled, clock=system_clock)
    except people.AccountError as exc:
        raise _fail(f"{exc}.") from None
    finally:
        database.dispose()


@users_app.command("disable")
def users_disable(username: Annotated[str, typer.Argument(help="The account to disable.")]) -> None:
    """Stop an account signing in; its open sessions end at once. Accounts are never deleted."""
    _set_enabled(username, enabled=False)
    console.print(f"User {username} disabled; their sessions have ended.")


@users_app.command("enable")
def users_enable(username: Annotated[str, typer.Argument(help="The account to enable again.")]) -> None:
    """Let a disabled account sign in again."""
    _set_enabled(username, enabled=True)
    console.print(f"User {username} enabled.")


@users_app.command("reset-password")
def users_reset_password(
    username: Annotated[str, typer.Argument(help="The account.")],
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
) -> None:
    """Give a local account a new password; unlocks it and ends its sessions."""
    password, show = _password(password_stdin, generate)
    database = _database()
    try:
        people.reset_password(database, username=username, password=password, clock=system_clock)
    except people.AccountError as exc:
        raise _fail(f"Not changed: {exc}.") from None
    finally:
        database.dispose()
    console.print(f"Password of {username} reset; the account is unlocked and its sessions have ended.")
    if show:
        typer.echo(f"Password (shown once): {password}")
