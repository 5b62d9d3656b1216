"""`homecare-gateway users add|list|disable|enable|reset-password`, against each backend."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from gateway.cli import app
from gateway.clock import system_clock
from gateway.domain import people
from gateway.store.db import Database
from tests.support import wipe

runner = CliRunner()
POLICY = people.SessionPolicy(
    idle=people.ANONYMOUS_SESSION,
    absolute=people.ANONYMOUS_SESSION,
    lockout_attempts=5,
    lockout=people.ANONYMOUS_SESSION,
)


@pytest.fixture
def cli_env(database: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    wipe(database)
    with database.write() as session:
        session.execute(text("DELETE FROM web_session"))
        session.execute(text("DELETE FROM clinician_user"))
    monkeypatch.setenv("DATABASE_URL", database.url.render_as_string(hide_password=False))
    return database


def signs_in(db: Database, username: str, password: str) -> bool:
    person = people.sign_in_with_password(
        db, username=username, password=password, policy=POLICY, clock=system_clock, request_id="r"
    )
    return person is not None


def test_users_add_list_disable_enable_and_reset_password(cli_env: Database) -> None:
    added = runner.invoke(
        app,
        [
            "users",
            "add",
            "--username",
            "alice",
            "--name",
            "Alice Example",
            "--ods",
            "RBA",
            "--password-stdin",
        ],
        input="a long enough password\n",
    )
    assert added.exit_code == 0, added.output
    assert signs_in(cli_env, "alice", "a long enough password")
    generated = runner.invoke(
        app, ["users", "add", "--username", "bob", "--name", "Bob", "--ods", "RBB", "--generate"]
    )
    assert generated.exit_code == 0, generated.output
    password = generated.output.split("Password (shown once): ")[1].strip()
    assert signs_in(cli_env, "bob", password)

    listed = json.loads(runner.invoke(app, ["users", "list", "--json", "--ods", "RBA"]).output)
    assert [(row["username"], row["ods"], row["enabled"], row["locked"]) for row in listed] == [
        ("alice", "RBA", True, False)
    ]
    assert listed[0]["last_sign_in"] is not None

    assert runner.invoke(app, ["users", "disable", "alice"]).exit_code == 0
    assert not signs_in(cli_env, "alice", "a long enough password")
    assert runner.invoke(app, ["users", "enable", "alice"]).exit_code == 0
    reset = runner.invoke(
        app, ["users", "reset-password", "alice", "--password-stdin"], input="another long one!\n"
    )
    assert reset.exit_code == 0, reset.output
    assert signs_in(cli_env, "alice", "another long one!") and not signs_in(
        cli_env, "alice", "a long enough password"
    )

    with cli_env.read() as session:
        reasons = (
            session.execute(
                text(
                    "SELECT reason FROM audit_event WHERE role = 'operator' "
                    "AND resource_type = 'ClinicianUser' ORDER BY id"
                )
            )
            .scalars()
            .all()
        )
    assert reasons == ["add-user", "add-user", "disable-user", "enable-user", "reset-password"]


def test_users_commands_refuse_what_they_cannot_do(cli_env: Database) -> None:
    short = runner.invoke(
        app,
        ["users", "add", "--username", "carol", "--name", "C", "--ods", "RBA", "--password-stdin"],
        input="short\n",
    )
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    bad_ods = runner.invoke(
        app, ["users", "add", "--username", "carol", "--name", "C", "--ods", "r b a", "--generate"]
    )
    assert bad_ods.exit_code == 1 and "ODS code" in bad_ods.output
    assert runner.invoke(app, ["users", "disable", "nobody"]).exit_code == 1
    assert runner.invoke(app, ["users", "reset-password", "nobody", "--generate"]).exit_code == 1
    runner.invoke(app, ["users", "add", "--username", "carol", "--name", "C", "--ods", "RBA", "--generate"])
    again = runner.invoke(
        app, ["users", "add", "--username", "carol", "--name", "C", "--ods", "RBA", "--generate"]
    )
    assert again.exit_code == 1 and "taken" in again.output
