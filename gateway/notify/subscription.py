"""The FHIR R4 Subscription a trust sends, checked; and the stored one, rendered back as FHIR.

Structure is fhir.resources R4B's to judge; then the gateway's own rules: a new subscription is
`requested`, its criteria are ones we support (see `criteria`), its channel is a rest-hook to an
https endpoint whose host resolves to public addresses only (see `endpoints`), its payload FHIR JSON or none (an
empty-body notification), its headers well-formed and not ones the gateway sets itself. Every
problem is collected before answering, each with the FHIRPath of its element.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from fhir_profiles.structure import check_resource_structure
from gateway.notify.criteria import CriteriaError, parse_criteria
from gateway.notify.endpoints import EndpointPolicy, EndpointRefusedError
from gateway.store.subscriptions import StoredSubscription

FHIR_JSON = "application/fhir+json"
REST_HOOK = "rest-hook"
SUBSCRIPTION_STATUSES = frozenset({"requested", "active", "error", "off"})
CHANNEL_TYPES = frozenset({"rest-hook", "websocket", "email", "sms", "message"})
MAX_HEADERS = 10
MAX_HEADER_LENGTH = 1000
MAX_REASON_LENGTH = 500
REDACTED = "[redacted]"
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
# Set by the gateway on every notification, or by HTTP itself: a subscriber cannot choose them.
RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-request-id",
        "x-signature",
    }
)


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """A checked request to subscribe: what the gateway stores."""

    criteria: str
    reason: str
    endpoint: str
    payload: str | None
    headers: tuple[str, ...]
    end: datetime | None


def _issue(code: IssueType, detail: ErrorCode, diagnostics: str, expression: str) -> Issue:
    return Issue(code, detail, diagnostics, expression)


def _missing(expression: str) -> Issue:
    element = expression.rsplit(".", 1)[-1]
    return _issue(
        IssueType.REQUIRED, ErrorCode.MISSING_FIELD, f"Required element '{element}' is missing", expression
    )


def _header_issues(headers: Any) -> tuple[list[Issue], tuple[str, ...]]:
    if headers is None:
        return [], ()
    if not isinstance(headers, list):
        return [], ()  # structure already says so
    issues: list[Issue] = []
    kept: list[str] = []
    if len(headers) > MAX_HEADERS:
        issues.append(
            _issue(
                IssueType.TOO_LONG,
                ErrorCode.INVALID_VALUE,
                f"At most {MAX_HEADERS} channel headers are accepted",
                "Subscription.channel.header",
            )
        )
    seen: set[str] = set()
    for index, header in enumerate(headers):
        expression = f"Subscription.channel.header[{index}]"
        if not isinstance(header, str):
            continue
        name, colon, value = header.partition(":")
        name, value = name.strip(), value.strip()
        problem = None
        if len(header) > MAX_HEADER_LENGTH:
            problem = f"A channel header may be at most {MAX_HEADER_LENGTH} characters"
        elif not colon or not _HEADER_NAME.match(name):
            problem = "A channel header is 'Name: value', with an HTTP header name"
        elif not value or not _HEADER_VALUE.match(value):
            problem = f"Header '{name}' needs a value without line breaks or control characters"
        elif name.lower() in RESERVED_HEADERS:
            problem = f"Header '{name}' is set by the gateway (or by HTTP) and cannot be chosen"
        elif name.lower() in seen:
            problem = f"Header '{name}' is given twice"
        if problem:
            issues.append(_issue(IssueType.VALUE, ErrorCode.INVALID_VALUE, problem, expression))
            continue
        seen.add(name.lower())
        kept.append(f"{name}: {value}")
    return issues, tuple(kept)


def _instant(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _string(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) else None


@dataclass(slots=True)
class _Channel:
    endpoint: str | None = None
    payload: str | None = None
    headers: tuple[str, ...] = ()


def _own_rules(
    document: dict[str, Any], *, now: datetime, endpoints: EndpointPolicy
) -> tuple[list[Issue], SubscriptionRequest | None]:
    issues: list[Issue] = []
    for name in ("status", "reason", "criteria", "channel"):
        if document.get(name) is None:
            issues.append(_missing(f"Subscription.{name}"))
    if document.get("modifierExtension"):
        issues.append(
            _issue(
                IssueType.NOT_SUPPORTED,
                ErrorCode.INVALID_VALUE,
                "Modifier extensions are not supported on a Subscription",
                "Subscription.modifierExtension",
            )
        )
    issues += _status_issues(_string(document, "status"))
    reason = _string(document, "reason")
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        issues.append(
            _issue(
                IssueType.TOO_LONG,
                ErrorCode.INVALID_VALUE,
                f"The reason may be at most {MAX_REASON_LENGTH} characters",
                "Subscription.reason",
            )
        )
    criteria = _string(document, "criteria")
    issues += _criteria_issues(criteria)
    end, end_issues = _end(_string(document, "end"), now=now)
    issues += end_issues
    channel = _Channel()
    if isinstance(document.get("channel"), dict):
        channel = _channel_rules(document["channel"], issues, endpoints=endpoints)
    if issues or criteria is None or reason is None or channel.endpoint is None:
        return issues, None
    return issues, SubscriptionRequest(
        criteria=criteria,
        reason=reason,
        endpoint=channel.endpoint,
        payload=channel.payload,
        headers=channel.headers,
        end=end,
    )


def _status_issues(status: str | None) -> list[Issue]:
    if status is None or status == "requested":
        return []
    return [
        _issue(
            IssueType.VALUE,
            ErrorCode.INVALID_VALUE,
            f"'{status[:40]}' is not a Subscription status"
            if status not in SUBSCRIPTION_STATUSES
            else f"A new Subscription's status must be 'requested', not '{status}': the gateway "
            "makes it 'active' when it accepts it",
            "Subscription.status",
        )
    ]


def _criteria_issues(criteria: str | None) -> list[Issue]:
    if criteria is None:
        return []
    try:
        parse_criteria(criteria)
    except CriteriaError as refused:
        return [
            _issue(
                IssueType.NOT_SUPPORTED,
                ErrorCode.INVALID_VALUE,
                f"Criteria '{criteria[:200]}' cannot be used: {refused}",
                "Subscription.criteria",
            )
        ]
    return []


def _end(end_text: str | None, *, now: datetime) -> tuple[datetime | None, list[Issue]]:
    end = None if end_text is None else _instant(end_text)
    if end is not None and end <= now:
        return end, [
            _issue(
                IssueType.VALUE,
                ErrorCode.INVALID_VALUE,
                "The end is in the past: a subscription ends in the future",
                "Subscription.end",
            )
        ]
    return end, []


def _channel_rules(channel: dict[str, Any], issues: list[Issue], *, endpoints: EndpointPolicy) -> _Channel:
    """The channel's rules: a rest-hook, a usable endpoint, FHIR JSON or no payload, headers we may send."""
    if channel.get("modifierExtension"):
        issues.append(
            _issue(
                IssueType.NOT_SUPPORTED,
                ErrorCode.INVALID_VALUE,
                "Modifier extensions are not supported on a Subscription channel",
                "Subscription.channel.modifierExtension",
            )
        )
    channel_type = _string(channel, "type")
    if channel.get("type") is None:
        issues.append(_missing("Subscription.channel.type"))
    elif channel_type is not None and channel_type != REST_HOOK:
        issues.append(
            _issue(
                IssueType.NOT_SUPPORTED if channel_type in CHANNEL_TYPES else IssueType.VALUE,
                ErrorCode.INVALID_VALUE,
                f"Channel type '{channel_type[:40]}' is not supported: only rest-hook",
                "Subscription.channel.type",
            )
        )
    endpoint = _string(channel, "endpoint")
    if channel.get("endpoint") is None:
        issues.append(_missing("Subscription.channel.endpoint"))
    elif endpoint is not None:
        try:
            endpoints.check(endpoint)
        except EndpointRefusedError as refused:
            issues.append(
                _issue(
                    IssueType.VALUE, ErrorCode.INVALID_VALUE, str(refused), "Subscription.channel.endpoint"
                )
            )
    payload = _payload(_string(channel, "payload"), issues)
    header_issues, headers = _header_issues(channel.get("header"))
    issues.extend(header_issues)
    return _Channel(endpoint, payload, headers)


def _payload(payload_text: str | None, issues: list[Issue]) -> str | None:
    if payload_text is None:
        return None
    payload = payload_text.split(";", 1)[0].strip().lower()
    if payload != FHIR_JSON:
        issues.append(
            _issue(
                IssueType.NOT_SUPPORTED,
                ErrorCode.INVALID_VALUE,
                f"Payload '{payload_text[:60]}' is not supported: use {FHIR_JSON}, or leave "
                "payload out for notifications with an empty body",
                "Subscription.channel.payload",
            )
        )
    return payload


def check_subscription(document: Any, *, now: datetime, endpoints: EndpointPolicy) -> SubscriptionRequest:
    """The subscription asked for, or an OperationOutcomeError (400) with every problem found."""
    if not isinstance(document, dict):
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_VALUE,
                    "The body must be a JSON object holding a FHIR Subscription",
                )
            ],
        )
    if document.get("resourceType") != "Subscription":
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_RESOURCE_TYPE,
                    "The body must be a FHIR Subscription",
                    "resourceType",
                )
            ],
        )
    issues = check_resource_structure(document)
    rule_issues, request = _own_rules(document, now=now, endpoints=endpoints)
    reported = {issue.expression for issue in issues}
    issues.extend(issue for issue in rule_issues if issue.expression not in reported)
    if issues or request is None:
        raise OperationOutcomeError(400, issues)
    return request


def redacted(header: str) -> str:
    """A stored channel header as it is shown back: its name only (values are often credentials)."""
    return f"{header.partition(':')[0]}: {REDACTED}"


def subscription_resource(subscription: StoredSubscription) -> dict[str, Any]:
    """A stored subscription as FHIR R4 JSON; header values are never shown again."""
    channel: dict[str, Any] = {"type": REST_HOOK, "endpoint": subscription.endpoint}
    if subscription.payload:
        channel["payload"] = subscription.payload
    if subscription.headers:
        channel["header"] = [redacted(header) for header in subscription.headers]
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": subscription.id,
        "meta": {"lastUpdated": subscription.updated_at.isoformat()},
        "status": subscription.status,
        "reason": subscription.reason,
        "criteria": subscription.criteria,
        "channel": channel,
    }
    if subscription.end_at is not None:
        resource["end"] = subscription.end_at.isoformat()
    if subscription.error:
        resource["error"] = subscription.error
    return resource
