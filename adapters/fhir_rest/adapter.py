"""The `fhir-rest` adapter: POSTs the trust's message Bundle to the provider's `$process-message`.

The Bundle travels as the exact bytes the trust sent, so the prescriber's signature over it stays
valid (DESIGN §10, "Forwarding"). The gateway's idempotency key and correlation ids therefore travel
in headers only (`Idempotency-Key`, `X-Request-ID`, `X-Correlation-ID`) and never in the Bundle:
the issue also asked for the key in `Bundle.identifier`, but writing it there would change the signed
bytes, and the trust's `Bundle.identifier` already identifies the message uniquely. New orders and
cancellations go to the same endpoint: the message's event tells them apart.

How answers map (DESIGN §10):

| provider answer                         | result                                              |
|-----------------------------------------|-----------------------------------------------------|
| 2xx                                     | `SendResult.delivered` (the gateway records `sent`) |
| 401, 403                                | `AdapterTransportError(credentials_problem=True)`   |
| 408, 429, 5xx (`Retry-After` honoured)  | `AdapterTransportError`                             |
| any other 4xx                           | `SendResult.rejected`, reason from its OperationOutcome |
| timeout, connection error, 1xx/3xx      | `AdapterTransportError`                             |
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from pydantic import BaseModel

from adapters.base import Adapter, AdapterTransportError, Health, Order, SendResult
from adapters.fhir_rest.settings import FhirRestSettings
from adapters.fhir_rest.tokens import ClientCredentialsTokens

FHIR_JSON = "application/fhir+json"
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
_CREDENTIALS_ERRORS = frozenset({401, 403})
_MAX_REASON_LENGTH = 500


class FhirRestAdapter:
    """Pushes orders to a provider's FHIR REST endpoint over one reused HTTP connection pool."""

    scheme: ClassVar[str] = "fhir-rest"
    config_model: ClassVar[type[BaseModel]] = FhirRestSettings

    def __init__(self, config: FhirRestSettings) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout_seconds),
            verify=config.verify_tls,
            follow_redirects=False,
            headers={"Accept": FHIR_JSON, "User-Agent": "homecare-gateway fhir-rest adapter"},
        )
        self._tokens: ClientCredentialsTokens | None = None
        if config.token_url is not None and config.client_id and config.client_secret is not None:
            self._tokens = ClientCredentialsTokens(
                self._client,
                token_url=str(config.token_url),
                client_id=config.client_id,
                client_secret=config.client_secret.get_secret_value(),
                scope=config.scope,
            )

    async def send(self, order: Order, *, idempotency_key: str) -> SendResult:
        headers = {"Content-Type": FHIR_JSON, "Idempotency-Key": idempotency_key}
        if order.request_id:
            headers["X-Request-ID"] = order.request_id
        if order.correlation_id:
            headers["X-Correlation-ID"] = order.correlation_id
        headers.update(await self._authorization())
        try:
            response = await self._client.post(
                self.config.process_message_url, content=order.message, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise AdapterTransportError(
                f"provider did not answer within {self.config.timeout_seconds:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise AdapterTransportError(f"provider unreachable ({type(exc).__name__}: {exc})") from exc
        return self._result(response)

    def _result(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        status_line = f"HTTP {status} {response.reason_phrase}".strip()
        if 200 <= status < 300:
            return SendResult.delivered(detail=status_line)
        if status in _CREDENTIALS_ERRORS:
            if self._tokens is not None:
                self._tokens.forget()
            raise AdapterTransportError(
                f"provider refused the gateway's credentials ({status_line})",
                credentials_problem=True,
                status_code=status,
            )
        if 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS:
            reason, code = _outcome_reason(response)
            return SendResult.rejected(reason or status_line, code=code)
        raise AdapterTransportError(
            f"provider answered {status_line}",
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            status_code=status,
        )

    async def _authorization(self) -> dict[str, str]:
        if self._tokens is not None:
            return {"Authorization": f"Bearer {await self._tokens.token()}"}
        if self.config.bearer_token is not None:
            return {"Authorization": f"Bearer {self.config.bearer_token.get_secret_value()}"}
        return {}

    async def check(self) -> Health:
        """GET {base_url}/metadata (with the configured credentials): reachable and a CapabilityStatement."""
        try:
            response = await self._client.get(self.config.metadata_url, headers=await self._authorization())
        except AdapterTransportError as exc:
            return Health(ok=False, detail=exc.reason)
        except httpx.HTTPError as exc:
            return Health(ok=False, detail=f"provider unreachable ({type(exc).__name__})")
        if response.status_code != 200:
            return Health(ok=False, detail=f"metadata answered HTTP {response.status_code}")
        try:
            resource_type = response.json().get("resourceType")
        except (ValueError, AttributeError):
            resource_type = None
        if resource_type != "CapabilityStatement":
            return Health(ok=False, detail="metadata is not a FHIR CapabilityStatement")
        return Health(ok=True, detail="metadata answered with a CapabilityStatement")

    async def aclose(self) -> None:
        await self._client.aclose()


if TYPE_CHECKING:
    # Checked by mypy: the class satisfies the adapter interface.
    _interface: type[Adapter] = FhirRestAdapter


def _outcome_reason(response: httpx.Response) -> tuple[str | None, str | None]:
    """The provider's reason and code from an OperationOutcome body, when it sent one."""
    try:
        body: Any = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return None, None
    reasons: list[str] = []
    code: str | None = None
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details: dict[str, Any] = issue["details"] if isinstance(issue.get("details"), dict) else {}
        codings = [c for c in details.get("coding") or [] if isinstance(c, dict)]
        text = (
            issue.get("diagnostics")
            or details.get("text")
            or next((c.get("display") for c in codings if c.get("display")), None)
        )
        if isinstance(text, str) and text:
            reasons.append(text)
        if code is None:
            detail_code = next((c.get("code") for c in codings if isinstance(c.get("code"), str)), None)
            code = detail_code or (issue.get("code") if isinstance(issue.get("code"), str) else None)
    reason = "; ".join(reasons)[:_MAX_REASON_LENGTH] or None
    return reason, code


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
