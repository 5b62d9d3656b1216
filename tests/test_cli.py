"""`homecare-gateway` commands: providers, migrations, OpenAPI export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.db import Database
from gateway.store.providers import list_providers
from tests.support import wipe

runner = CliRunner()


@pytest.fixture
def cli_env(database: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    wipe(database)
    monkeypatch.setenv("DATABASE_URL", database.url.render_as_string(hide_password=False))
    return database


def test_providers_add_list_update_disable(cli_env: Database) -> None:
    added = runner.invoke(
        app,
        [
            "providers",
            "add",
            "--ods",
            "VNCEL",
            "--name",
            "Homecare One",
            "--adapter",
            "fhir-rest",
            "--base-url",
            "http://127.0.0.1:8101/fhir",
            "--setting",
            "timeout_seconds=5",
        ],
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["providers", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (provider,) = json.loads(listed.output)
    assert provider == {
        "ods": "VNCEL",
        "name": "Homecare One",
        "adapter": "fhir-rest",
        "enabled": True,
        "settings": {"base_url": "http://127.0.0.1:8101/fhir", "timeout_seconds": "5"},
    }

    again = runner.invoke(
        app,
        [
            "providers",
            "add",
            "--ods",
            "VNCEL",
            "--name",
            "x",
            "--adapter",
            "fhir-rest",
            "--base-url",
            "http://h",
        ],
    )
    assert again.exit_code == 1 and "already registered" in again.output

    assert (
        runner.invoke(app, ["providers", "update", "--ods", "VNCEL", "--name", "Homecare 1"]).exit_code == 0
    )
    refused = runner.invoke(app, ["providers", "update", "--ods", "VNCEL", "--setting", "timeout_seconds=-1"])
    assert refused.exit_code == 1 and "timeout_seconds" in refused.output
    assert runner.invoke(app, ["providers", "disable", "VNCEL"]).exit_code == 0
    with cli_env.read() as session:
        (stored,) = list_providers(session)
    assert stored.name == "Homecare 1" and stored.enabled is False
    assert runner.invoke(app, ["providers", "update", "--ods", "VNCEL", "--enable"]).exit_code == 0
    with cli_env.read() as session:
        assert list_providers(session)[0].enabled is True


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ods", "vncel", "--name", "x", "--adapter", "fhir-rest"], "ODS code"),
        (["--ods", "VNCEL", "--name", "x", "--adapter", "carrier-pigeon"], "choose one of"),
        (["--ods", "VNCEL", "--name", "x", "--adapter", "fhir-rest"], "base_url"),
        (["--ods", "VNCEL", "--name", "x", "--adapter", "fhir-rest", "--base-url", "not a url"], "base_url"),
        (
            [
                "--ods",
                "VNCEL",
                "--name",
                "x",
                "--adapter",
                "fhir-rest",
                "--base-url",
                "http://h/fhir",
                "--setting",
                "colour=blue",
            ],
            "colour",
        ),
        (["--ods", "VNCEL", "--name", "x", "--adapter", "fhir-rest", "--setting", "novalue"], "KEY=VALUE"),
    ],
)
def test_providers_add_refuses_bad_input(cli_env: Database, arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["providers", "add", *arguments])
    assert result.exit_code != 0
    assert message in result.output
    with cli_env.read() as session:
        assert list_providers(session) == []


def test_updating_or_disabling_an_unknown_provider_fails(cli_env: Database) -> None:
    assert runner.invoke(app, ["providers", "disable", "NOPE1"]).exit_code == 1
    assert runner.invoke(app, ["providers", "update", "--ods", "NOPE1", "--name", "x"]).exit_code == 1


def test_db_upgrade_creates_the_schema_in_a_new_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("HOMECARE_DATA_DIR", str(tmp_path / "fresh"))
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fresh" / "gateway.db").exists()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0, "migrating twice is harmless"


def test_openapi_check_fails_on_drift(tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"
    assert runner.invoke(app, ["openapi", "--output", str(target)]).exit_code == 0
    assert runner.invoke(app, ["openapi", "--output", str(target), "--check"]).exit_code == 0
    target.write_text("{}", encoding="utf-8")
    drifted = runner.invoke(app, ["openapi", "--output", str(target), "--check"])
    assert drifted.exit_code == 1
