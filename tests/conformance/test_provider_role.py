"""The provider role end to end: the suite plays the gateway toward our shipped FHIR REST provider
simulator, which reports status to the suite's own status API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from adapters.csv_drop.simulator import FolderSimulatorServer
from adapters.fhir_rest.simulator import SimulatorServer
from adapters.hl7v2_mllp.simulator import MllpSimulatorServer
from adapters.pull.simulator import PullSimulator, PullSimulatorConfig
from tests.conformance.support import json_report, outcomes, run_cli
from tests.support import free_port

STATUS_TOKEN = "conformance-status-token"


def provider_role(tmp_path: Path, target: str, config: str, *options: str) -> int:
    """`homecare-conformance run --role provider` against `target` with `config` as its [provider]
    section; its reports go to `tmp_path`."""
    path = tmp_path / "conformance.toml"
    path.write_text(f"[provider]\n{config}", encoding="utf-8")
    return run_cli(
        "run",
        "--target",
        target,
        "--role",
        "provider",
        "--config",
        str(path),
        "--report-dir",
        str(tmp_path),
        *options,
    )


def run_provider_role(
    tmp_path: Path, **simulator_settings: Any
) -> tuple[int, dict[str, str], dict[str, str]]:
    listen = f"127.0.0.1:{free_port()}"
    config = f'ods = "VNCEL"\ntrust_ods = "RBA"\nstatus_token = "{STATUS_TOKEN}"\nwait_seconds = 20\n'
    with SimulatorServer(
        "VNCEL",
        seed=3,
        status_url=f"http://{listen}/fhir/Task",
        status_token=STATUS_TOKEN,
        step_delay_seconds=0.02,
        **simulator_settings,
    ) as provider:
        code = provider_role(tmp_path, provider.base_url, config, "--listen", listen)
    report = json_report(tmp_path, "provider")
    return code, outcomes(report), {t["id"]: t["message"] for t in report["tests"]}


def test_our_provider_simulator_passes(tmp_path: Path) -> None:
    code, results, messages = run_provider_role(tmp_path)
    assert {k: messages[k] for k, v in results.items() if v != "pass"} == {}
    assert code == 0


def test_a_provider_that_is_down_fails_the_acknowledgement_test(tmp_path: Path) -> None:
    code, results, messages = run_provider_role(tmp_path, down=True)
    assert code == 1
    assert results["PROV-ACK-01"] == "fail" and "HTTP 503" in messages["PROV-ACK-01"]
    assert results["PROV-REJ-01"] == "fail"  # a 503 is no permanent refusal either


def test_a_provider_that_reports_without_the_token_fails(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = f'ods = "VNCEL"\nstatus_token = "{STATUS_TOKEN}"\nwait_seconds = 3\n'
    with SimulatorServer(
        "VNCEL",
        seed=3,
        status_url=f"http://{listen}/fhir/Task",
        status_token="wrong",
        step_delay_seconds=0.02,
    ) as provider:
        code = provider_role(
            tmp_path, provider.base_url, config, "--listen", listen, "--only", "PROV-STATUS-01"
        )
    assert code == 1
    assert "without the configured bearer token" in json_report(tmp_path, "provider")["tests"][0]["message"]


# --- HL7 v2 over MLLP ---------------------------------------------------------------------------


def run_over_mllp(
    tmp_path: Path, *, wait: float = 20, **simulator_settings: Any
) -> tuple[int, dict[str, Any]]:
    port = free_port()
    config = (
        'ods = "VNCEL"\ntransport = "hl7v2-mllp"\ntrust_ods = "RBA"\n'
        f'wait_seconds = {wait}\nack_timeout_seconds = 5\nlisten = "127.0.0.1:{port}"\n'
    )
    with MllpSimulatorServer(
        "VNCEL",
        seed=3,
        status_port=port,
        step_delay_seconds=0.05,
        status_retry_seconds=0.05,
        **simulator_settings,
    ) as provider:
        code = provider_role(tmp_path, f"mllp://{provider.host}:{provider.port}", config)
        counts = provider.receipt_counts()
    report = json_report(tmp_path, "provider")
    return code, {"report": report, "counts": counts}


def test_our_mllp_simulator_passes(tmp_path: Path) -> None:
    code, run = run_over_mllp(tmp_path)
    report = run["report"]
    results = outcomes(report)
    messages = {t["id"]: t["message"] for t in report["tests"]}
    assert {k: messages[k] for k, v in results.items() if v not in ("pass", "skip")} == {}
    assert results["PROV-IDEM-02"] == "skip" and all(
        v == "pass" for k, v in results.items() if k != "PROV-IDEM-02"
    )
    assert code == 0
    # The repeat under the same control id reached the provider, which took the order once.
    assert sorted(run["counts"].values()).count(3) == 1  # order, repeat, other bytes: one key
    evidence = next(t for t in report["tests"] if t["id"] == "PROV-ACK-01")["evidence"]
    sent = evidence["exchanges"][0]
    assert sent["method"] == "MLLP" and sent["request"]["body"].startswith("MSH|^~\\&|HOMECARE-GATEWAY")
    assert "MSA|AA|" in sent["response"]["body"]


def test_an_mllp_provider_that_refuses_everything_fails_the_acknowledgement_test(tmp_path: Path) -> None:
    code, run = run_over_mllp(tmp_path, wait=1, reject_rate=1.0)
    messages = {t["id"]: t["message"] for t in run["report"]["tests"]}
    results = outcomes(run["report"])
    assert code == 1
    assert results["PROV-ACK-01"] == "fail" and "answered AE" in messages["PROV-ACK-01"]
    assert results["PROV-REJ-01"] == "pass"  # refused with its reason, as it should be


# --- file drop ------------------------------------------------------------------------------------


def run_over_files(
    tmp_path: Path, *, ack: float = 5, **simulator_settings: Any
) -> tuple[int, dict[str, Any]]:
    root = tmp_path / "provider"
    config = (
        'ods = "VNCEL"\ntransport = "csv-drop"\ntrust_ods = "RBA"\n'
        f"wait_seconds = 20\nack_timeout_seconds = {ack}\n"
    )
    with FolderSimulatorServer(
        root, "VNCEL", seed=3, step_delay_seconds=0.05, poll_interval_seconds=0.05, **simulator_settings
    ) as provider:
        code = provider_role(tmp_path, root.as_uri(), config)
        counts = provider.receipt_counts()
    return code, {"report": json_report(tmp_path, "provider"), "counts": counts, "root": root}


def test_our_folder_simulator_passes(tmp_path: Path) -> None:
    code, run = run_over_files(tmp_path)
    report = run["report"]
    results = outcomes(report)
    messages = {t["id"]: t["message"] for t in report["tests"]}
    assert {k: messages[k] for k, v in results.items() if v not in ("pass", "skip")} == {}
    assert {k for k, v in results.items() if v == "skip"} == {"PROV-IDEM-02", "PROV-CANCEL-02"}
    assert code == 0
    assert sorted(run["counts"].values()).count(3) == 1  # order, repeat, other bytes: one key, taken once
    # The suite read every status file and moved it to done/, as the gateway's poller does.
    status = run["root"] / "status"
    assert not list(status.glob("*.csv")) and list((status / "done").glob("*.csv"))
    evidence = next(t for t in report["tests"] if t["id"] == "PROV-ACK-01")["evidence"]
    sent = evidence["exchanges"][0]
    assert sent["method"] == "FILE" and sent["request"]["body"].startswith("format_version,order_key,")


def test_a_folder_provider_that_takes_nothing_fails_the_acknowledgement_test(tmp_path: Path) -> None:
    code, run = run_over_files(tmp_path, ack=0.2, down=True)
    messages = {t["id"]: t["message"] for t in run["report"]["tests"]}
    results = outcomes(run["report"])
    assert code == 1
    assert results["PROV-ACK-01"] == "fail" and "not picked up within 0.2 s" in messages["PROV-ACK-01"]
    assert results["PROV-REJ-01"] == "fail"  # a file never read is no refusal either


# --- pull -----------------------------------------------------------------------------------------


def run_over_pull(
    tmp_path: Path, *, ack: float = 10, **simulator_settings: Any
) -> tuple[int, dict[str, Any]]:
    target = f"http://127.0.0.1:{free_port()}"
    config = (
        'ods = "VNCEL"\ntransport = "pull"\ntrust_ods = "RBA"\n'
        f"wait_seconds = 20\nack_timeout_seconds = {ack}\n"
    )
    settings = PullSimulatorConfig(
        ods="VNCEL",
        gateway_url=target,
        client_id="vncel-orders",
        kid="conformance",
        seed=3,
        step_delay_seconds=0.05,
        poll_interval_seconds=0.05,
        **simulator_settings,
    )
    with PullSimulator(settings, key=ECKey.generate_key("P-256")) as provider:
        code = provider_role(tmp_path, target, config)
        orders = provider.orders()
    return code, {"report": json_report(tmp_path, "provider"), "orders": orders}


def test_our_pull_simulator_passes(tmp_path: Path) -> None:
    code, run = run_over_pull(tmp_path)
    report = run["report"]
    results = outcomes(report)
    messages = {t["id"]: t["message"] for t in report["tests"]}
    assert {k: messages[k] for k, v in results.items() if v not in ("pass", "skip")} == {}
    assert {k for k, v in results.items() if v == "skip"} == {"PROV-IDEM-02", "PROV-REJ-02", "PROV-CANCEL-02"}
    assert code == 0
    assert len(run["orders"]) == 2  # the order (offered twice, taken once) and the one cancelled
    evidence = next(t for t in report["tests"] if t["id"] == "PROV-ACK-01")["evidence"]
    assert evidence["exchanges"][0]["method"] == "PUT"  # the provider's first Task update acknowledged it


def test_a_pulling_provider_that_never_polls_fails_the_acknowledgement_test(tmp_path: Path) -> None:
    code, run = run_over_pull(tmp_path, ack=0.3, down=True)
    messages = {t["id"]: t["message"] for t in run["report"]["tests"]}
    assert code == 1
    assert "not pulled and acknowledged within 0.3 s" in messages["PROV-ACK-01"]


@pytest.mark.parametrize(
    ("transport", "target", "says"),
    [
        ("hl7v2-mllp", "http://127.0.0.1:1", "must be mllp://HOST:PORT"),
        ("hl7v2-mllp", "mllp://127.0.0.1:1", "give --listen HOST:PORT"),
        ("csv-drop", "/nonexistent-provider-folder", "does not exist"),
        ("pull", "mllp://127.0.0.1:1", "must be http://HOST:PORT"),
        ("sftp", "http://127.0.0.1:1", "is not one of fhir-rest, hl7v2-mllp, csv-drop, pull"),
    ],
)
def test_a_transport_misconfigured_cannot_run_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], transport: str, target: str, says: str
) -> None:
    config = tmp_path / "conformance.toml"
    config.write_text(f'[provider]\nods = "VNCEL"\ntransport = "{transport}"\n', encoding="utf-8")
    code = run_cli("run", "--target", target, "--role", "provider", "--config", str(config))
    assert code == 2
    assert says in capsys.readouterr().err


def test_status_sent_twice_over_mllp_is_taken_once(tmp_path: Path) -> None:
    code, run = run_over_mllp(tmp_path, duplicate_status_next=20)
    assert code == 0, {t["id"]: t["message"] for t in run["report"]["tests"] if t["outcome"] == "fail"}


def test_a_folder_provider_writing_a_malformed_status_file_fails_the_status_test(tmp_path: Path) -> None:
    code, run = run_over_files(tmp_path, malformed_status_next=1)
    messages = {t["id"]: t["message"] for t in run["report"]["tests"]}
    assert code == 1
    assert "has no column occurred_at" in messages["PROV-STATUS-01"]
    assert list((run["root"] / "status" / "error").glob("*.csv"))  # moved aside, as the gateway does
