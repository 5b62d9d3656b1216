"""The trust role end to end: the suite serves as the gateway; a scripted trust performs the scenarios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance.scripted_trust import Mistakes, ScriptedTrust
from tests.conformance.support import json_report, outcomes, run_cli
from tests.support import free_port


def run_trust_role(tmp_path: Path, trust: ScriptedTrust) -> tuple[int, dict[str, str], dict[str, str]]:
    (tmp_path / "trust.jwks.json").write_text(json.dumps(trust.jwks), encoding="utf-8")
    config = tmp_path / "conformance.toml"
    config.write_text(
        f'[trust]\nclient_id = "{trust.client_id}"\nods = "{trust.ods}"\njwks = "trust.jwks.json"\nwait_seconds = 20\n',
        encoding="utf-8",
    )
    target = f"http://127.0.0.1:{free_port()}"
    trust.start(target)
    code = run_cli(
        "run", "--target", target, "--role", "trust", "--config", str(config), "--report-dir", str(tmp_path)
    )
    assert trust.thread is not None
    trust.thread.join(timeout=10)
    assert trust.problem is None, trust.problem
    report = json_report(tmp_path, "trust")
    return code, outcomes(report), {t["id"]: t["message"] for t in report["tests"]}


def test_a_well_behaved_trust_passes(tmp_path: Path) -> None:
    code, results, messages = run_trust_role(tmp_path, ScriptedTrust("epr-under-test", "RBA"))
    assert {k: messages[k] for k, v in results.items() if v != "pass"} == {}
    assert code == 0
    assert len(results) == 11


@pytest.mark.parametrize(
    ("mistakes", "caught_by", "saying"),
    [
        (Mistakes(reuse_jti=True), "TRUST-AUTH-04", "jti was used again"),
        (Mistakes(bad_check_character=True), "TRUST-ID-01", "fails MOD 37-2"),
        (Mistakes(change_bytes_on_retry=True), "TRUST-RETRY-01", "changed the message's bytes"),
        (Mistakes(cancel_another_prescription=True), "TRUST-CANCEL-01", "not S1's"),
    ],
)
def test_each_mistake_is_caught_by_the_test_that_names_it(
    tmp_path: Path, mistakes: Mistakes, caught_by: str, saying: str
) -> None:
    code, results, messages = run_trust_role(tmp_path, ScriptedTrust("epr-under-test", "RBA", mistakes))
    assert code == 1
    assert results[caught_by] == "fail" and saying in messages[caught_by]
    assert [k for k, v in results.items() if v == "fail"] == [caught_by]
