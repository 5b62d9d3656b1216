"""The test model: a conformance test has a stable ID, a title, the requirement it checks, a role,
and gives a result (pass, fail, skip with why, or error when the suite itself broke) with the
request and response evidence behind it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Role(enum.StrEnum):
    GATEWAY = "gateway"
    TRUST = "trust"
    PROVIDER = "provider"


class Outcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (an outcome, not a password)
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


class Failed(Exception):  # noqa: N818 (a test outcome, named as the report names it)
    """The system under test broke the requirement."""


class Skipped(Exception):  # noqa: N818 (a test outcome)
    """The test could not be run against this target (the reason says why)."""


@dataclass(frozen=True)
class Exchange:
    """One HTTP request and its answer (or an MLLP message and its ACK, or a file: `status` None), as
    evidence. Credentials are redacted before it is made."""

    direction: str  # "sent" (the suite called the system under test) or "received" (it called us)
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: str
    status: int | None
    response_headers: dict[str, str]
    response_body: str
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "method": self.method,
            "url": self.url,
            "request": {"headers": self.request_headers, "body": self.request_body},
            "response": None
            if self.status is None and not self.response_body
            else {"status": self.status, "headers": self.response_headers, "body": self.response_body},
            "error": self.error,
        }


@dataclass
class Evidence:
    """What one test saw: the exchanges, in order, and notes on what it checked."""

    exchanges: list[Exchange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)


TestBody = Callable[[Any, Evidence], None]


@dataclass(frozen=True)
class Requirement:
    """Where a rule comes from: `source` is e.g. "DESIGN.md §6", "EPS", "FHIR R4", "RFC 7523"."""

    source: str
    text: str

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


@dataclass(frozen=True)
class TestDefinition:
    __test__ = False  # not a pytest test, whatever its name

    id: str
    title: str
    requirement: Requirement
    role: Role
    body: TestBody
    optional: bool = False
    group: str = ""

    @property
    def area(self) -> str:
        return self.id.rsplit("-", 1)[0]


@dataclass
class TestResult:
    __test__ = False

    definition: TestDefinition
    outcome: Outcome
    message: str
    evidence: Evidence
    seconds: float
    waiver: str | None = None

    @property
    def blocking(self) -> bool:
        """A failure or error that makes the run fail: a required test that is not waived."""
        return (
            self.outcome in (Outcome.FAIL, Outcome.ERROR)
            and not self.definition.optional
            and self.waiver is None
        )


REGISTRY: dict[str, TestDefinition] = {}


def conformance_test(
    test_id: str,
    title: str,
    requirement: Requirement,
    *,
    role: Role,
    optional: bool = False,
) -> Callable[[TestBody], TestBody]:
    """Register a test under a stable ID; the ID never changes meaning once published."""

    def register(body: TestBody) -> TestBody:
        if test_id in REGISTRY:
            raise ValueError(f"duplicate conformance test ID {test_id}")
        REGISTRY[test_id] = TestDefinition(test_id, title, requirement, role, body, optional)
        return body

    return register
