"""`homecare-gateway kpi recompute` and `kpi export` against a real database."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.db import Database
from tests.kpi.storage import kpi_tables, put_events, put_prescriptions
from tests.kpi.test_api import deliveries

runner = CliRunner()


@pytest.fixture
def cli_db(db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))
    histories = [
        *deliveries("a", "VNCEL", "RBA", on_time=5, late=1),
        *deliveries("b", "VNCEL", "RBB", on_time=2),
    ]
    put_prescriptions(db, histories)
    put_events(db, [event for history in histories for event in history.events])
    return db


def test_recompute_builds_the_month_and_export_writes_the_published_csv(
    cli_db: Database, tmp_path: Path
) -> None:
    built = runner.invoke(app, ["kpi", "recompute", "--month", "2026-02"])
    assert built.exit_code == 0, built.output
    assert "Recomputed month 2026-02 from 8 prescription(s)" in built.output
    cells, _ = kpi_tables(cli_db)
    assert cells[("2026-02", "VNCEL", "RBA", "on-time-delivery")][:2] == (5, 6)

    target = tmp_path / "kpi-2026-02.csv"
    exported = runner.invoke(app, ["kpi", "export", "--month", "2026-02", "--output", str(target)])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    on_time = next(r for r in rows if r["measure"] == "on-time-delivery" and not r["breakdown"])
    assert (on_time["provider"], on_time["trust"], on_time["numerator"], on_time["denominator"]) == (
        "VNCEL",
        "",
        "7",
        "8",
    )

    by_trust = runner.invoke(app, ["kpi", "export", "--month", "2026-02", "--by-trust"])
    assert by_trust.exit_code == 0, by_trust.output
    rows = list(csv.DictReader(io.StringIO(by_trust.stdout)))
    per_trust = {
        r["trust"]: (r["numerator"], r["denominator"])
        for r in rows
        if r["measure"] == "on-time-delivery" and not r["breakdown"]
    }
    assert per_trust == {"RBA": ("5", "6"), "RBB": ("2", "2")}


def test_recompute_all_and_a_bad_month(cli_db: Database) -> None:
    built = runner.invoke(app, ["kpi", "recompute", "--all"])
    assert built.exit_code == 0, built.output
    assert kpi_tables(cli_db)[0][("2026-02", "VNCEL", "RBB", "on-time-delivery")][:2] == (2, 2)
    assert runner.invoke(app, ["kpi", "recompute", "--month", "2026-13"]).exit_code == 2
    assert runner.invoke(app, ["kpi", "recompute"]).exit_code == 2
