"""The JSON report. Its shape is `report.schema.json` beside this file (JSON Schema 2020-12); the
`schemaVersion` changes its major number whenever a field is removed or changes meaning."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from conformance.model import Outcome, TestResult
from conformance.runner import RunResult

SCHEMA_VERSION = "1.1"
SCHEMA_ID = "https://homecare-gateway.nhs.uk/conformance/report-1.schema.json"


def report_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        resources.files("conformance.reports").joinpath("report.schema.json").read_text("utf-8")
    )
    return schema


def verdict(run: RunResult) -> str:
    """fail: a required test failed; incomplete: none failed but a required one did not run; else pass."""
    if run.blocking:
        return "fail"
    skipped = [r for r in run.results if r.outcome is Outcome.SKIP and not r.definition.optional]
    return "incomplete" if skipped else "pass"


def _test(result: TestResult) -> dict[str, Any]:
    definition = result.definition
    return {
        "id": definition.id,
        "title": definition.title,
        "role": definition.role.value,
        "area": definition.area,
        "optional": definition.optional,
        "requirement": {"source": definition.requirement.source, "text": definition.requirement.text},
        "outcome": result.outcome.value,
        "message": result.message,
        "waiver": result.waiver,
        "blocking": result.blocking,
        "seconds": round(result.seconds, 3),
        "evidence": {
            "notes": list(result.evidence.notes),
            "exchanges": [exchange.as_json() for exchange in result.evidence.exchanges],
        },
    }


def report_document(run: RunResult) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_ID,
        "schemaVersion": SCHEMA_VERSION,
        "suite": {"name": "homecare-conformance", "version": run.suite_version},
        "role": run.role.value,
        "target": run.target,
        "started": run.started.isoformat(),
        "finished": run.finished.isoformat(),
        "verdict": verdict(run),
        "summary": {
            "total": len(run.results),
            **{outcome.value: run.count(outcome) for outcome in Outcome},
            "waived": sum(1 for r in run.results if r.waiver is not None),
            "blocking": len(run.blocking),
        },
        "tests": [_test(result) for result in run.results],
    }


def write_json(run: RunResult, path: Path) -> None:
    path.write_text(json.dumps(report_document(run), indent=2), encoding="utf-8")
