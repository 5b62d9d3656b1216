"""Helpers of the conformance tests: run the CLI in this process, read its reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conformance.cli import main


def run_cli(*argv: str) -> int:
    """`homecare-conformance ARGV` in this process; its exit code."""
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    return int(stopped.value.code or 0)


def json_report(folder: Path, role: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / f"conformance-{role}.json").read_text(encoding="utf-8"))
    return document


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {test["id"]: test["outcome"] for test in report["tests"]}


def write_waivers(folder: Path, waivers: dict[str, str]) -> Path:
    path = folder / "waivers.toml"
    path.write_text("[waivers]\n" + "".join(f'{k} = "{v}"\n' for k, v in waivers.items()), encoding="utf-8")
    return path


# The gateway does not refuse repeated JSON keys, nor read identifiers as ASCII only, yet (DESIGN.md
# §10 wave 2, hardening): waived here, as a vendor waives a known gap, until that lands.
KNOWN_GAPS = {
    "INTAKE-13": "repeated JSON keys are refused by the hardening work, not landed yet",
    "INTAKE-14": "identifiers are read as ASCII only by the hardening work, not landed yet",
}
