"""The three reports: JUnit XML parses, the JSON validates against its published schema, the HTML
stands alone (no scripts, no external references) and never shows a credential."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from conformance.reports.json_report import report_schema
from tests.conformance.conftest import SuiteTarget
from tests.conformance.support import json_report, run_cli

SOME_OF_EACH = ("AUTH-01", "AUTH-06", "INTAKE-01", "INTAKE-13", "TENANCY-01", "SUB-02", "PHI-01")


@pytest.fixture(scope="module")
def reports(gateway_target: SuiteTarget, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reports")
    only = [arg for test_id in SOME_OF_EACH for arg in ("--only", test_id)]
    run_cli(
        "run",
        "--target",
        gateway_target.url,
        "--role",
        "gateway",
        "--config",
        str(gateway_target.config),
        "--report-dir",
        str(folder),
        *only,
    )
    return folder


def test_the_json_report_validates_against_its_schema(reports: Path) -> None:
    document = json_report(reports, "gateway")
    jsonschema_rs.validator_for(report_schema()).validate(document)
    assert document["schemaVersion"] == "1.1"
    assert [t["id"] for t in document["tests"]] == list(SOME_OF_EACH)


def test_the_schema_refuses_a_report_that_breaks_it(reports: Path) -> None:
    document: dict[str, Any] = json_report(reports, "gateway")
    document["tests"][0]["outcome"] = "maybe"
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.validator_for(report_schema()).validate(document)


def test_junit_xml_parses_with_a_case_per_test(reports: Path) -> None:
    root = ET.parse(reports / "conformance-gateway.junit.xml").getroot()
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name", "").split(" ")[0] for c in cases] == list(SOME_OF_EACH)
    failed = [c.get("name", "").split(" ")[0] for c in cases if c.find("failure") is not None]
    assert failed == []
    assert root.find("./testsuite").get("failures") == "0"  # type: ignore[union-attr]


def test_html_is_self_contained(reports: Path) -> None:
    html = (reports / "conformance-gateway.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.IGNORECASE) == []
    assert re.findall(r"url\(", html) == []
    assert "INTAKE-13" in html and "DESIGN.md" in html


def test_evidence_never_shows_a_credential(reports: Path) -> None:
    for name in ("conformance-gateway.json", "conformance-gateway.html", "conformance-gateway.junit.xml"):
        text = (reports / name).read_text(encoding="utf-8")
        assert re.findall(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ", text) == [], name
        assert re.findall(r"Bearer [A-Za-z0-9_.-]{12,}", text) == [], name
    document = json_report(reports, "gateway")
    token_exchange = document["tests"][0]["evidence"]["exchanges"][-1]
    assert "client_assertion=%5Bredacted%5D" in token_exchange["request"]["body"]
    assert '"access_token": "[redacted]"' in token_exchange["response"]["body"]
