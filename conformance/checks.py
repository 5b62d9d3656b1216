"""Small checks the tests share: statuses, OperationOutcome shape, OAuth errors. Each raises Failed
with a sentence a vendor can act on."""

from __future__ import annotations

import json
from typing import Any

import httpx

from conformance.model import Failed

ISSUE_SEVERITIES = {"fatal", "error", "warning", "information"}
# FHIR R4 IssueType (http://hl7.org/fhir/issue-type), the required value set of issue.code.
ISSUE_TYPES = {
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
}


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise Failed(f"HTTP {response.status_code}: the body is not JSON") from exc


def expect_status(response: httpx.Response, *expected: int) -> None:
    if response.status_code not in expected:
        wanted = " or ".join(str(code) for code in expected)
        raise Failed(f"expected HTTP {wanted}, got {response.status_code}")


def outcome_shape_problems(document: Any) -> list[str]:
    """What is wrong with an OperationOutcome as FHIR R4 defines it (empty when nothing is)."""
    if not isinstance(document, dict) or document.get("resourceType") != "OperationOutcome":
        return ["the body is not an OperationOutcome"]
    issues = document.get("issue")
    if not isinstance(issues, list) or not issues:
        return ["OperationOutcome.issue is missing or empty (1..* in FHIR R4)"]
    problems = []
    for n, issue in enumerate(issues):
        if not isinstance(issue, dict):
            problems.append(f"issue[{n}] is not an object")
            continue
        if issue.get("severity") not in ISSUE_SEVERITIES:
            problems.append(f"issue[{n}].severity {issue.get('severity')!r} is not a FHIR IssueSeverity")
        if issue.get("code") not in ISSUE_TYPES:
            problems.append(f"issue[{n}].code {issue.get('code')!r} is not a FHIR IssueType")
        expression = issue.get("expression", [])
        if not isinstance(expression, list) or not all(isinstance(e, str) for e in expression):
            problems.append(f"issue[{n}].expression must be a list of strings")
        if "Traceback (most recent call last)" in str(issue.get("diagnostics", "")):
            problems.append(f"issue[{n}].diagnostics holds a stack trace")
    return problems


def issues_of(response: httpx.Response) -> list[dict[str, Any]]:
    document = json_body(response)
    problems = outcome_shape_problems(document)
    if problems:
        raise Failed(f"HTTP {response.status_code}: " + "; ".join(problems))
    issues: list[dict[str, Any]] = document["issue"]
    return issues


def expect_refusal(
    response: httpx.Response,
    status: int,
    code: str | set[str],
    expression: str | None = None,
) -> dict[str, Any]:
    """The answer is `status` with an OperationOutcome naming `code` (and `expression`, when given,
    on the same issue; a trailing `*` matches any FHIRPath below it). Returns that issue."""
    expect_status(response, status)
    codes = {code} if isinstance(code, str) else code
    issues = issues_of(response)
    matching = [i for i in issues if i.get("code") in codes and i.get("severity") in ("error", "fatal")]
    expect(
        matching != [], f"no error issue with code {' or '.join(sorted(codes))}; issues: {_summary(issues)}"
    )
    if expression is None:
        return matching[0]
    for issue in matching:
        if any(_expression_matches(expression, e) for e in issue.get("expression", [])):
            return issue
    raise Failed(
        f"no {'/'.join(sorted(codes))} issue names expression {expression!r}; issues: {_summary(issues)}"
    )


def _expression_matches(wanted: str, actual: str) -> bool:
    """Exact, or (when `wanted` ends with `*`) a FHIRPath that starts with the rest."""
    if wanted.endswith("*"):
        return actual.startswith(wanted[:-1])
    return actual == wanted


def _summary(issues: list[dict[str, Any]]) -> str:
    return "; ".join(f"{i.get('code')} at {i.get('expression', [])}" for i in issues[:6])


def expect_oauth_error(response: httpx.Response, status: int, error: str) -> None:
    """RFC 6749 §5.2: the status, a JSON body whose `error` is exactly the code, and no caching."""
    expect(
        response.status_code == status and _oauth_error(response) == error,
        f"expected HTTP {status} error={error!r}, got HTTP {response.status_code} "
        f"error={_oauth_error(response)!r}",
    )
    expect(
        "access_token" not in response.text,
        "a refused token request must not carry an access token",
    )
    expect(
        "no-store" in response.headers.get("cache-control", ""),
        "a token endpoint answer must be sent with Cache-Control: no-store (RFC 6749 §5.1)",
    )


def _oauth_error(response: httpx.Response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None
