"""Exit codes: 0 passed, 1 a required test failed, 2 the suite could not run, 3 usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.cli import EXIT_CANNOT_RUN, EXIT_FAILED, EXIT_USAGE
from conformance.wire import Answer, IncomingRequest, LocalEndpoint
from tests.conformance.conftest import SuiteTarget
from tests.conformance.support import json_report, outcomes, run_cli, write_waivers
from tests.support import free_port


def test_list_prints_every_test(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    ids = {row["id"] for row in listed}
    assert {
        "AUTH-03",
        "INTAKE-01",
        "TENANCY-02",
        "STATUS-04",
        "CANCEL-01",
        "SUB-02",
        "OO-01",
        "PHI-01",
    } <= ids
    assert {"TRUST-RETRY-01", "PROV-ACK-01"} <= ids
    assert all(
        row["requirement"]["source"] and row["role"] in ("gateway", "trust", "provider") for row in listed
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--role", "gateway"],  # no --target
        ["run", "--target", "http://127.0.0.1:9", "--role", "dispatcher"],
        ["run", "--target", "http://127.0.0.1:9", "--role", "gateway", "--only", "NOPE-99"],
        ["run", "--target", "http://127.0.0.1:9", "--role", "gateway", "--client-id", "x"],  # no --key
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_3(argv: list[str], tmp_path: Path) -> None:
    assert run_cli(*argv, *(["--report-dir", str(tmp_path)] if argv[0] == "run" else [])) == EXIT_USAGE


def test_an_unreachable_target_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(
        "run",
        "--target",
        f"http://127.0.0.1:{free_port()}",
        "--role",
        "gateway",
        "--report-dir",
        str(tmp_path),
    )
    assert code == EXIT_CANNOT_RUN
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(
        "homecare-conformance: cannot run: the target does not answer"
    )
    assert not (tmp_path / "conformance-gateway.json").exists()


@pytest.mark.parametrize(
    ("config_text", "complaint"),
    [
        ("[gateway\n", "not valid TOML"),
        (
            '[gateway.clients.trust_a]\nclient_id = "a"\nods = "RCF"\nkey = "missing.pem"\n',
            "cannot read key file",
        ),
        ('[gateway.clients.trust_a]\nclient_id = "a"\nods = "rcf"\nkey = "k.pem"\n', "is not an ODS code"),
        ("[elsewhere]\n", "unknown section"),
    ],
)
def test_bad_configuration_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config_text: str, complaint: str
) -> None:
    config = tmp_path / "conformance.toml"
    config.write_text(config_text, encoding="utf-8")
    code = run_cli("run", "--target", "http://127.0.0.1:9", "--role", "gateway", "--config", str(config))
    assert code == EXIT_CANNOT_RUN
    assert complaint in capsys.readouterr().err


def test_a_waiver_without_a_reason_or_for_no_test_exits_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text('[waivers]\nAUTH-01 = ""\n', encoding="utf-8")
    assert (
        run_cli("run", "--target", "http://127.0.0.1:9", "--role", "gateway", "--waivers", str(empty))
        == EXIT_CANNOT_RUN
    )
    unknown = write_waivers(tmp_path, {"AUTH-99": "no such test"})
    assert (
        run_cli("run", "--target", "http://127.0.0.1:9", "--role", "gateway", "--waivers", str(unknown))
        == EXIT_CANNOT_RUN
    )


def lax_gateway(request: IncomingRequest) -> Answer:
    """A deliberately wrong gateway: it gives a token to anyone, whatever the assertion says."""
    if request.path == "/auth/token":
        return Answer.json(
            200, {"access_token": "anything", "token_type": "bearer", "expires_in": 300}, "application/json"
        )
    return Answer.json(200, {"resourceType": "CapabilityStatement"})


def test_a_failing_test_exits_1_and_names_the_requirement(
    gateway_target: SuiteTarget, tmp_path: Path
) -> None:
    with LocalEndpoint(lax_gateway) as wrong:
        code = run_cli(
            "run",
            "--target",
            wrong.url,
            "--role",
            "gateway",
            "--config",
            str(gateway_target.config),
            "--report-dir",
            str(tmp_path),
            "--only",
            "AUTH-02",
            "--only",
            "AUTH-05",
            "--only",
            "AUTH-06",
        )
    assert code == EXIT_FAILED
    report = json_report(tmp_path, "gateway")
    assert outcomes(report) == {"AUTH-02": "fail", "AUTH-05": "fail", "AUTH-06": "fail"}
    alg_none = report["tests"][0]
    assert "expected HTTP 401 error='invalid_client', got HTTP 200" in alg_none["message"]
    assert alg_none["requirement"]["source"].startswith("DESIGN.md §6")


def test_a_waived_failure_does_not_fail_the_run(gateway_target: SuiteTarget, tmp_path: Path) -> None:
    waivers = write_waivers(tmp_path, {"AUTH-02": "our token service is replaced next quarter"})
    with LocalEndpoint(lax_gateway) as wrong:
        code = run_cli(
            "run",
            "--target",
            wrong.url,
            "--role",
            "gateway",
            "--config",
            str(gateway_target.config),
            "--report-dir",
            str(tmp_path),
            "--only",
            "AUTH-02",
            "--waivers",
            str(waivers),
        )
    assert code == 0
    test = json_report(tmp_path, "gateway")["tests"][0]
    assert (test["outcome"], test["waiver"], test["blocking"]) == (
        "fail",
        "our token service is replaced next quarter",
        False,
    )


def test_init_gateway_writes_keys_a_configuration_and_the_operator_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformance.config import load_config

    assert run_cli("init-gateway", "--dir", str(tmp_path), "--provider-listen", "127.0.0.1:8399") == 0
    said = capsys.readouterr().out
    assert "homecare-gateway clients add --client-id conformance-trust-b --role trust --ods RCG" in said
    assert "--base-url http://127.0.0.1:8399/fhir" in said
    config = load_config(tmp_path / "conformance.toml").gateway
    assert config.provider_listen == ("127.0.0.1", 8399)
    assert config.trust_a is not None and config.trust_a.identity.algorithm == "ES384"
    assert (tmp_path / "conformance-trust-a.pem").stat().st_mode & 0o077 == 0
