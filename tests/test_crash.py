"""Kill -9 dispatcher processes mid-send: nothing accepted is lost, nothing is accepted twice."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from gateway.store.db import Database
from tests.support import wipe

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crash_test.py"
_spec = importlib.util.spec_from_file_location("crash_test", _SCRIPT)
assert _spec is not None and _spec.loader is not None
crash_test = importlib.util.module_from_spec(_spec)
sys.modules["crash_test"] = crash_test
_spec.loader.exec_module(crash_test)


@pytest.mark.slow
def test_killing_workers_mid_send_loses_nothing_and_duplicates_no_acceptance(database: Database) -> None:
    wipe(database)
    report = crash_test.run_crash_test(
        database.url.render_as_string(hide_password=False), kills=12, prescriptions=40, seed=3
    )
    assert report.kills == 12
    assert report.kills_mid_send >= 6, report.lines()
    assert report.lost == 0, report.lines()
    assert report.accepted_more_than_once == 0, report.lines()
    assert report.reached_provider == report.prescriptions == 40
    assert report.not_sent_at_gateway == 0, report.lines()


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["hl7v2-mllp", "csv-drop", "pull"])
def test_killing_gateway_processes_mid_send_loses_nothing_and_applies_nothing_twice(
    database: Database, adapter: str
) -> None:
    """Orders out and status back through each adapter, the processes doing it killed again and again:
    every order reaches the provider once and ends `delivered`, and every report is applied once."""
    wipe(database)
    report = crash_test.run_crash_test(
        database.url.render_as_string(hide_password=False), kills=4, prescriptions=14, seed=5, adapter=adapter
    )
    assert report.kills_mid_send >= 2, report.lines()
    assert report.lost == 0, report.lines()
    assert report.accepted_more_than_once == 0, report.lines()
    assert report.not_sent_at_gateway == 0, report.lines()
    assert report.applied_twice == 0, report.lines()
