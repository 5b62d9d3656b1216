"""`homecare-gateway demo` runs a provider of each kind: its sample orders go out through all four
adapters (FHIR REST, HL7 v2 over MLLP, CSV file drop, pull) and come back delivered (but for the two
FHIR REST samples kept for the clinician pages: a query left open, a delivery that failed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.store.db import Database
from tests.support import free_port
from tests.test_cli_errors import clean_environment, running


@pytest.mark.slow
def test_the_demo_delivers_through_every_adapter(tmp_path: Path) -> None:
    port = free_port()
    environment = clean_environment(tmp_path)
    with running("demo", "--port", str(port), "--prescriptions", "5", env=environment, port=port):
        database = Database(f"sqlite:///{tmp_path / 'gateway.db'}", pool_size=1)
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
            finished = (
                len(outcome) == 4
                and all(
                    statuses == {"delivered"}
                    for adapter, statuses in outcome.items()
                    if adapter != "fhir-rest"
                )
                and {"query", "delivery-failed"} <= outcome["fhir-rest"]
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
