"""Runs the selected tests of a role, one after another, and collects their results."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from conformance.model import REGISTRY, Evidence, Failed, Outcome, Role, Skipped, TestDefinition, TestResult
from conformance.wire import TargetUnreachableError


class RoleRun(Protocol):
    """The shared state of a role's tests; `begin` hands it the evidence of the next test."""

    def begin(self, evidence: Evidence) -> None: ...


def load_all_tests() -> None:
    """Import the modules that register tests (each role's test modules)."""
    from conformance.roles.gateway import tests as _gateway  # noqa: F401
    from conformance.roles.provider import tests as _provider  # noqa: F401
    from conformance.roles.trust import tests as _trust  # noqa: F401


def select_tests(role: Role | None = None, only: Iterable[str] = ()) -> list[TestDefinition]:
    load_all_tests()
    wanted = {test_id.upper() for test_id in only}
    unknown = wanted - set(REGISTRY)
    if unknown:
        raise KeyError(f"unknown test ID {sorted(unknown)[0]}")
    return [
        test
        for test in REGISTRY.values()
        if (role is None or test.role is role) and (not wanted or test.id in wanted)
    ]


@dataclass
class RunResult:
    role: Role
    target: str
    started: datetime
    finished: datetime
    results: list[TestResult] = field(default_factory=list)
    suite_version: str = ""

    @property
    def blocking(self) -> list[TestResult]:
        return [r for r in self.results if r.blocking]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)


Progress = Callable[[TestDefinition, TestResult | None], None]


def run_one(test: TestDefinition, state: RoleRun, waiver: str | None) -> TestResult:
    evidence = Evidence()
    state.begin(evidence)
    started = time.perf_counter()
    try:
        test.body(state, evidence)
        outcome, message = Outcome.PASS, ""
    except Failed as exc:
        outcome, message = Outcome.FAIL, str(exc)
    except Skipped as exc:
        outcome, message = Outcome.SKIP, str(exc)
    except TargetUnreachableError as exc:
        outcome, message = Outcome.ERROR, f"the system under test did not answer: {exc}"
    except Exception as exc:  # noqa: BLE001 (the suite's own fault: reported as an error, never hidden)
        outcome, message = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
        evidence.note("".join(traceback.format_exception(exc)[-3:]))
    return TestResult(test, outcome, message, evidence, time.perf_counter() - started, waiver)


def run_tests(
    tests: list[TestDefinition],
    state: Any,
    *,
    role: Role,
    target: str,
    waivers: dict[str, str],
    progress: Progress | None = None,
) -> RunResult:
    from conformance import __version__

    run = RunResult(role, target, datetime.now(UTC), datetime.now(UTC), suite_version=__version__)
    for test in tests:
        if progress:
            progress(test, None)
        result = run_one(test, state, waivers.get(test.id))
        run.results.append(result)
        if progress:
            progress(test, result)
    run.finished = datetime.now(UTC)
    return run
