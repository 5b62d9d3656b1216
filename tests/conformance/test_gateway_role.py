"""The gateway role against our own gateway: the real app on a real socket, the suite over HTTP only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.conftest import SuiteTarget
from tests.conformance.support import KNOWN_GAPS, json_report, outcomes, run_cli, write_waivers


def run_gateway_role(target: SuiteTarget, reports: Path, *extra: str) -> int:
    waivers = write_waivers(reports, KNOWN_GAPS)
    return run_cli(
        "run",
        "--target",
        target.url,
        "--role",
        "gateway",
        "--config",
        str(target.config),
        "--report-dir",
        str(reports),
        "--waivers",
        str(waivers),
        *extra,
    )


def test_our_gateway_passes_every_gateway_test(gateway_target: SuiteTarget, tmp_path: Path) -> None:
    code = run_gateway_role(gateway_target, tmp_path)
    report = json_report(tmp_path, "gateway")
    not_passed = {k: v for k, v in outcomes(report).items() if v != "pass" and k not in KNOWN_GAPS}
    assert not_passed == {}, [t["message"] for t in report["tests"] if t["id"] in not_passed]
    assert code == 0
    assert report["verdict"] == "pass"
    assert len(report["tests"]) >= 60


@pytest.mark.postgres
def test_our_gateway_on_postgresql_passes(postgres_gateway_target: SuiteTarget, tmp_path: Path) -> None:
    code = run_gateway_role(postgres_gateway_target, tmp_path)
    report = json_report(tmp_path, "gateway")
    failed = {
        t["id"]: t["message"] for t in report["tests"] if t["outcome"] != "pass" and t["id"] not in KNOWN_GAPS
    }
    assert failed == {}
    assert code == 0


def test_only_runs_the_named_tests(gateway_target: SuiteTarget, tmp_path: Path) -> None:
    code = run_gateway_role(gateway_target, tmp_path, "--only", "AUTH-02", "--only", "intake-03")
    assert code == 0
    assert outcomes(json_report(tmp_path, "gateway")) == {"AUTH-02": "pass", "INTAKE-03": "pass"}


def test_without_a_second_trust_the_tenancy_tests_skip_and_say_why(
    gateway_target: SuiteTarget, tmp_path: Path
) -> None:
    config = gateway_target.config.read_text(encoding="utf-8")
    start = config.index("[gateway.clients.trust_b]")
    end = config.index("[gateway.clients.provider]")
    lean = gateway_target.config.parent / "lean.toml"
    lean.write_text(config[:start] + config[end:], encoding="utf-8")
    code = run_cli(
        "run",
        "--target",
        gateway_target.url,
        "--role",
        "gateway",
        "--config",
        str(lean),
        "--report-dir",
        str(tmp_path),
        "--only",
        "TENANCY-01",
        "--only",
        "AUTH-01",
    )
    report = json_report(tmp_path, "gateway")
    assert code == 0
    assert report["verdict"] == "incomplete"
    tenancy = next(t for t in report["tests"] if t["id"] == "TENANCY-01")
    assert tenancy["outcome"] == "skip" and "trust_b" in tenancy["message"]


def test_one_client_from_the_command_line_is_enough_for_the_token_tests(
    gateway_target: SuiteTarget, tmp_path: Path
) -> None:
    key = gateway_target.config.parent / "conformance-trust-a.pem"
    code = run_cli("run", "--target", gateway_target.url, "--role", "gateway", "--client-id", "conformance-trust-a",
                   "--key", str(key), "--report-dir", str(tmp_path), "--only", "AUTH-01", "--only", "AUTH-08",
                   "--only", "INTAKE-01")  # fmt: skip
    assert code == 0
    results = outcomes(json_report(tmp_path, "gateway"))
    assert results == {"AUTH-01": "pass", "AUTH-08": "pass", "INTAKE-01": "skip"}
