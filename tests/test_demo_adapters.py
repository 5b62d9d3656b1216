"""`homecare-gateway demo` runs a provider of each kind: its sample orders go out through all four
adapters (FHIR REST, HL7 v2 over MLLP, CSV file drop, pull) and come back delivered (but for the two
FHIR REST samples kept for the clinician pages: a query left open, a delivery that failed); a
weekly supply delivered with no next order gets a run-out warning, and the public performance page
charts every provider."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from gateway.store.db import Database
from tests.support import free_port
from tests.test_cli_errors import clean_environment, running

DEMO_PROVIDERS = {"VNCEL", "VNFKT", "VNHLS", "VNFIL", "VNPUL"}


@pytest.mark.slow
def test_the_demo_delivers_through_every_adapter(tmp_path: Path) -> None:
    port = free_port()
    # As `make demo` runs it: a data folder relative to the working directory.
    environment = clean_environment(Path("var/demo"))
    demo = ("demo", "--port", str(port), "--prescriptions", "6", "--trickle-seconds", "0", "--pace", "0.25")
    with running(*demo, env=environment, port=port, cwd=tmp_path):
        database = Database(f"sqlite:///{tmp_path / 'var/demo/gateway.db'}", pool_size=1)
        deadline = time.monotonic() + 120
        while True:
            outcome: dict[str, set[str]] = {}
            with database.read() as session:
                for adapter, status in session.execute(
                    text(
                        "SELECT provider.adapter, prescription.status FROM prescription "
                        "JOIN provider ON provider.ods_code = prescription.provider_ods"
                    )
                ):
                    outcome.setdefault(adapter, set()).add(status)
                warnings = session.execute(text("SELECT count(*) FROM run_out_alert")).scalar_one()
            page = httpx.get(f"http://127.0.0.1:{port}/performance", timeout=10).text
            charted = {
                ods
                for ods, row in re.findall(r'data-provider="([A-Z0-9]+)"(.*?)</tr>', page, re.S)
                if "<circle" in row or "<polyline" in row
            }
            finished = (
                len(outcome) == 4
                and all(
                    statuses == {"delivered"}
                    for adapter, statuses in outcome.items()
                    if adapter != "fhir-rest"
                )
                and {"query", "delivery-failed"} <= outcome["fhir-rest"]
                and warnings >= 1
                and charted == DEMO_PROVIDERS
            )
            if finished or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        database.dispose()
    assert {adapter: outcome.get(adapter) for adapter in ("hl7v2-mllp", "csv-drop", "pull")} == {
        adapter: {"delivered"} for adapter in ("hl7v2-mllp", "csv-drop", "pull")
    }
    # The clinician's samples: the query stays open for a person to answer, the failed delivery stays failed.
    assert {"query", "delivery-failed"} <= outcome["fhir-rest"]
    assert warnings == 1, "the weekly supply delivered with no next order"
    assert charted == DEMO_PROVIDERS, "a chart with figures for every provider"
