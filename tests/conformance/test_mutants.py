"""Testing the tests: each mutant gateway is our gateway with one deliberate fault (gateway/faults.py),
and the conformance suite's gateway role must fail it with the test that names the fault.

Each mutant is a process of its own (a fault replaces functions process-wide), started as
`homecare-gateway serve` starts (tests/conformance/gateway_process.py) on a free port with
`HOMECARE_TEST_FAULT`, on SQLite in a temporary folder, with the suite's clients and providers
registered. The suite runs the tests this table names for the fault (the
whole role takes tens of seconds; these take a few); the control run, the same tests against the
same kind of process without a fault, shows that they pass when nothing is broken.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.setup import write_gateway_config
from gateway.faults import Fault
from gateway.settings import Settings
from gateway.store.db import Database
from tests.conformance.conftest import register_suite_clients
from tests.conformance.gateway_process import GatewayProcess, gateway_process
from tests.conformance.support import json_report, outcomes, run_cli
from tests.support import free_port

# The conformance tests that must fail against each mutant: the ones that name its fault.
KILLED_BY: dict[Fault, tuple[str, ...]] = {
    Fault.ACCEPT_ALG_NONE: ("AUTH-02",),
    Fault.ACCEPT_HMAC_ASSERTION: ("AUTH-03",),
    Fault.IGNORE_ASSERTION_AUDIENCE: ("AUTH-04",),
    Fault.ACCEPT_EXPIRED_ASSERTION: ("AUTH-05",),
    Fault.ACCEPT_REPLAYED_JTI: ("AUTH-06",),
    Fault.ACCEPT_UNKNOWN_KID: ("AUTH-07",),
    Fault.SKIP_ASSERTION_SIGNATURE: ("AUTH-08",),
    Fault.ACCEPT_LONG_LIVED_ASSERTION: ("AUTH-09",),
    Fault.ACCEPT_ISS_NOT_SUB: ("AUTH-10",),
    Fault.GRANT_UNREGISTERED_SCOPES: ("AUTH-13",),
    Fault.TRUST_UNSIGNED_BEARER_TOKENS: ("AUTH-14",),
    Fault.ISSUE_EXTRA_SCOPES: ("AUTH-15",),
    Fault.NHS_NUMBER_IN_LOCATION: ("INTAKE-01", "PHI-01"),
    Fault.ACCEPT_BAD_CHECK_CHARACTER: ("INTAKE-03",),
    Fault.ACCEPT_BAD_NHS_CHECK_DIGIT: ("INTAKE-04", "INTAKE-16", "IDEM-04"),
    Fault.ACCEPT_UNKNOWN_PROVIDER: ("INTAKE-06",),
    Fault.STRUCTURE_ERRORS_AS_422: ("INTAKE-08", "INTAKE-15"),
    Fault.IGNORE_MESSAGE_SENDER: ("INTAKE-09",),
    Fault.ANSWER_500_TO_BAD_JSON: ("INTAKE-11", "OO-01"),
    Fault.DROP_ISSUE_EXPRESSION: ("INTAKE-03", "INTAKE-04", "INTAKE-15", "SUB-05"),
    Fault.REPLAY_OTHER_BODY: ("IDEM-02",),
    Fault.ACCEPT_DUPLICATE_PRESCRIPTION_ID: ("IDEM-03",),
    Fault.DROP_IDEMPOTENCY_KEY: ("DISPATCH-01",),
    Fault.REWRITE_FORWARDED_BYTES: ("DISPATCH-01",),
    Fault.APPLY_STALE_REPORTS: ("STATUS-03",),
    Fault.ALLOW_ILLEGAL_TRANSITIONS: ("STATUS-04",),
    Fault.SHOW_OTHER_PROVIDERS_ORDERS: ("STATUS-06", "TENANCY-04"),
    Fault.ASK_PROVIDER_TO_CANCEL_UNSENT: ("CANCEL-01",),
    Fault.IGNORE_PROVIDER_CANCEL_REFUSAL: ("CANCEL-03",),
    Fault.CANCEL_AFTER_DISPENSED: ("CANCEL-04",),
    Fault.SHOW_OTHER_TRUSTS_TASKS: ("TENANCY-01",),
    Fault.SEARCH_ACROSS_TENANTS: ("TENANCY-02",),
    Fault.CANCEL_OTHER_TRUSTS_ORDERS: ("TENANCY-03",),
    Fault.DROP_NOTIFICATION_SIGNATURE: ("SUB-02",),
    Fault.SIGN_NOTIFICATIONS_WITH_WRONG_KEY: ("SUB-02",),
    Fault.LET_ANYONE_SUBSCRIBE: ("SUB-04",),
    Fault.ALLOW_NHS_NUMBER_IN_SEARCH_URL: ("PHI-02",),
}

# Settings of a gateway under test: quick to dispatch and retry, nothing waiting on a timer.
TEST_GATEWAY_SETTINGS = {
    "HOMECARE_ENVIRONMENT": "development",
    "HOMECARE_AUDIT_SEAL_SECONDS": "0",
    "HOMECARE_JWKS_REFRESH_SECONDS": "0",
    "HOMECARE_PROVIDER_CACHE_SECONDS": "0",
    "HOMECARE_DISPATCH_POLL_SECONDS": "0.05",
    "HOMECARE_RETRY_BASE_SECONDS": "0.2",
    "HOMECARE_RETRY_CAP_SECONDS": "1",
    "HOMECARE_BREAKER_COOLDOWN_SECONDS": "1",
    "HOMECARE_CANCEL_WAIT_SECONDS": "1",
    "HOMECARE_LOG_LEVEL": "WARNING",
    # The suite's subscriber listens on loopback over plain http.
    "HOMECARE_ALLOW_LOOPBACK_SUBSCRIBERS": "true",
}


@dataclass(frozen=True)
class SuiteTarget:
    gateway: GatewayProcess
    config: Path


def _settings(folder: Path, port: int, fault: Fault | None) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("HOMECARE_") and name != "DATABASE_URL"
    }
    return {
        **inherited,
        **TEST_GATEWAY_SETTINGS,
        "HOMECARE_DATA_DIR": str(folder / "data"),
        "HOMECARE_DATABASE_URL": f"sqlite:///{folder / 'gateway.db'}",
        "HOMECARE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        **({"HOMECARE_TEST_FAULT": fault.value} if fault is not None else {}),
    }


@contextmanager
def suite_target(folder: Path, fault: Fault | None) -> Iterator[SuiteTarget]:
    """Our gateway (with `fault`, if any) on a new SQLite database, the suite's clients registered."""
    port, provider_listen = free_port(), f"127.0.0.1:{free_port()}"
    config = write_gateway_config(folder / "suite", provider_listen)
    database = Database(f"sqlite:///{folder / 'gateway.db'}")
    database.migrate()
    register_suite_clients(database, folder / "suite", provider_listen)
    database.dispose()
    with gateway_process(_settings(folder, port, fault), port, folder / "gateway.log") as gateway:
        yield SuiteTarget(gateway, config)


def run_suite(target: SuiteTarget, reports: Path, test_ids: tuple[str, ...]) -> tuple[int, dict[str, str]]:
    only = [argument for test_id in test_ids for argument in ("--only", test_id)]
    code = run_cli(
        "run", "--target", target.gateway.url, "--role", "gateway", "--config", str(target.config),
        "--report-dir", str(reports), *only,
    )  # fmt: skip
    return code, outcomes(json_report(reports, "gateway"))


def test_every_fault_has_the_tests_that_must_catch_it() -> None:
    assert set(KILLED_BY) == set(Fault)


def test_every_fault_names_code_that_exists() -> None:
    """A renamed function would leave its mutant gateway unable to start: said here, at once."""
    from gateway.fault_injection import REPLACEMENTS

    for fault in Fault:
        for owner, name, _make in REPLACEMENTS[fault]():
            assert hasattr(owner, name), f"{fault.value}: {owner!r} has no {name}"


def test_the_readme_lists_every_mutant_and_the_tests_that_kill_it() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {line.split("`")[1]: line for line in readme.splitlines() if line.startswith("| `")}
    for fault, test_ids in KILLED_BY.items():
        assert fault.value in rows, f"README: no row for {fault.value}"
        assert rows[fault.value].rstrip(" |").endswith(", ".join(test_ids)), f"README: {fault.value}"


def test_production_refuses_a_test_fault(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"HOMECARE_TEST_FAULT=accept-alg-none .* production refuses it"):
        Settings(
            environment="production",
            signing_keys_dir=tmp_path,
            public_base_url="https://gateway.example.nhs.uk",
            test_fault=Fault.ACCEPT_ALG_NONE,
        )


def test_an_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="test_fault"):
        Settings(test_fault="accept-everything")


def test_without_a_fault_the_same_tests_pass(tmp_path: Path) -> None:
    """The control: every test the table names passes against the unbroken gateway, started alike."""
    every_test = tuple(sorted({test_id for test_ids in KILLED_BY.values() for test_id in test_ids}))
    with suite_target(tmp_path, None) as target:
        code, results = run_suite(target, tmp_path / "reports", every_test)
    assert {k: v for k, v in results.items() if v != "pass"} == {}
    assert sorted(results) == sorted(every_test)
    assert code == 0
    assert "test_fault_active" not in target.gateway.output()


@pytest.mark.parametrize("fault", list(Fault), ids=lambda fault: fault.value)
def test_the_suite_fails_the_mutant_with_the_test_that_names_its_fault(fault: Fault, tmp_path: Path) -> None:
    with suite_target(tmp_path, fault) as target:
        code, results = run_suite(target, tmp_path / "reports", KILLED_BY[fault])
    log = target.gateway.output()
    assert "test_fault_active" in log and fault.value in log, "the mutant did not say loudly what it is"
    survived = {
        test_id: results.get(test_id) for test_id in KILLED_BY[fault] if results.get(test_id) != "fail"
    }
    assert survived == {}, f"the mutant {fault.value} survived these tests"
    assert code == 1
