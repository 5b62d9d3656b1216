"""The simulated homecare provider behind the FHIR REST simulator: intake, deduplication and status Tasks
over the shared order book (`adapters.simulation.order_book`), which runs the lifecycle.

Framework-free: `simulator.py` puts it on HTTP. Requests are handled on the server's event loop;
the read methods (`orders`, `receipts`, `status_log`, ...) and `configure`/`reset` are safe to call
from any thread, so tests and the demo can watch a simulator running in a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx
import orjson

from adapters.fhir_rest.simulator_config import SimulatorConfig
from adapters.fhir_rest.status_tasks import status_task, task_id
from adapters.simulation.lifecycle import WRONG_PROVIDER, RealTime, Reason, SimulationTime
from adapters.simulation.order_book import (
    CANCEL_REFUSED,
    BookedOrder,
    Intake,
    LifecycleEvent,
    OrderBook,
)
from fhir_profiles import codes
from fhir_profiles.homecare import validate_message
from fhir_profiles.identifiers import ORDER_ITEM_NUMBER_SYSTEM
from fhir_profiles.outcome import operation_outcome, status_for, success_outcome

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_JSON_MEDIA_TYPES = frozenset({FHIR_JSON, "application/json"})


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, independent of the web framework."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = FHIR_JSON


@dataclass(frozen=True, slots=True)
class Receipt:
    """One request to `$process-message`, whatever became of it."""

    idempotency_key: str | None
    received_at: datetime
    status_code: int
    outcome: str
    """accepted, duplicate, cancelled, down, unauthorised, forbidden, throttled, failed, invalid,
    refused (business rule or `reject_rate`), or conflict (a key or prescription ID reused)."""
    request_id: str | None
    correlation_id: str | None
    body_sha256: str


@dataclass(frozen=True, slots=True)
class AcceptedOrder:
    """A new-prescription order the simulator took, and where its items are in the lifecycle."""

    idempotency_key: str
    short_form_id: str
    sender_ods: str
    nhs_number: str
    item_ids: tuple[str, ...]
    message: bytes = field(repr=False)
    received_at: datetime
    receipts: int
    """How many requests carried this order's idempotency key (the first and every repeat)."""
    item_statuses: dict[str, str]
    lifecycle_done: bool


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One status Task the simulator produced, and whether it reached `status_url`."""

    sequence: int
    short_form_id: str
    item_id: str
    status: str
    task: dict[str, Any]
    target: str | None
    attempts: int = 0
    response_status: int | None = None
    error: str | None = None

    @property
    def posted(self) -> bool:
        return self.response_status is not None and 200 <= self.response_status < 300


@dataclass(frozen=True, slots=True)
class _OrderDetails:
    """What the FHIR side keeps of an order beside the shared order book."""

    sender_ods: str
    nhs_number: str
    correlation_id: str | None


class ProviderSimulator:
    """A homecare provider's order system, as seen through FHIR `$process-message`."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        time_source: SimulationTime | None = None,
        status_token_source: Callable[[], str] | None = None,
    ) -> None:
        self._config = config
        self._time: SimulationTime = time_source or RealTime()
        # Where a fresh bearer token for status_url comes from (e.g. client credentials at the
        # gateway); called from a worker thread before each status report. Overrides status_token.
        self._status_token = status_token_source
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self.book = OrderBook(
            lambda: self._config,
            time=self._time,
            deliver=self._deliver_events,
            on_record=self._log_events,
            lock=self._lock,
        )
        # Access tokens outlive a reset, as a provider's sessions would.
        self._tokens: dict[str, float] = {}
        self._tokens_issued = 0
        self._clear()

    def _clear(self) -> None:
        self._details: dict[str, _OrderDetails] = {}
        self._report_counts: dict[str, int] = {}
        self._logged: dict[int, StatusReport] = {}
        self._answers: dict[str, tuple[str, Answer]] = {}
        self._receipts: list[Receipt] = []
        self._receipt_counts: dict[str, int] = {}
        self._reports: list[StatusReport] = []

    # --- control, from any thread ---------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change behaviour at runtime (validated; unknown names are refused)."""
        with self._lock:
            self._config = self._config.updated(changes)
            return self._config

    def reset(self) -> None:
        """Forget every order, receipt and report and stop running lifecycles; the config stays."""
        with self._lock:
            self._clear()
            self.book.reset(self._loop)

    # --- reads, from any thread -----------------------------------------------------------------

    def orders(self) -> list[AcceptedOrder]:
        with self._lock:
            return [self._snapshot(order) for order in self.book.orders()]

    def order(self, short_form_id: str) -> AcceptedOrder | None:
        with self._lock:
            order = self.book.order(short_form_id)
            return self._snapshot(order) if order else None

    def receipts(self) -> list[Receipt]:
        with self._lock:
            return list(self._receipts)

    def receipt_counts(self) -> dict[str, int]:
        """Requests per idempotency key: at-least-once delivery shows as counts of one or more."""
        with self._lock:
            return dict(self._receipt_counts)

    def tokens_issued(self) -> int:
        """Access tokens handed out by `/oauth2/token` (to show that clients cache them)."""
        with self._lock:
            return self._tokens_issued

    def status_log(self) -> list[StatusReport]:
        with self._lock:
            return list(self._reports)

    def _snapshot(self, order: BookedOrder) -> AcceptedOrder:
        details = self._details[order.short_form_id]
        return AcceptedOrder(
            idempotency_key=order.key,
            short_form_id=order.short_form_id,
            sender_ods=details.sender_ods,
            nhs_number=details.nhs_number,
            item_ids=order.item_ids,
            message=order.message,
            received_at=order.received_at,
            receipts=self._receipt_counts.get(order.key, 0),
            item_statuses=order.item_statuses,
            lifecycle_done=order.lifecycle_done,
        )

    # --- running, on the server's event loop ----------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._http = httpx.AsyncClient(timeout=10.0)

    async def stop(self) -> None:
        await self.book.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def metadata(self) -> Answer:
        if self._config.down:
            return _unavailable()
        return Answer(200, capability_statement(self._config.ods, self._time.now()))

    def issue_token(self, authorization: str | None, form: Mapping[str, str]) -> Answer:
        """OAuth 2.0 client credentials (HTTP Basic or form client authentication)."""
        config = self._config
        if config.client_id is None:
            return Answer(404, {"error": "not_found"}, media_type="application/json")
        if form.get("grant_type") != "client_credentials":
            return Answer(400, {"error": "unsupported_grant_type"}, media_type="application/json")
        client_id, client_secret = _client_auth(authorization, form)
        if client_id != config.client_id or not secrets.compare_digest(
            client_secret or "", config.client_secret or ""
        ):
            return Answer(
                401,
                {"error": "invalid_client"},
                headers={"WWW-Authenticate": 'Basic realm="token"'},
                media_type="application/json",
            )
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + config.token_lifetime_seconds
            self._tokens_issued += 1
        return Answer(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_in": config.token_lifetime_seconds},
            headers={"Cache-Control": "no-store"},
            media_type="application/json",
        )

    async def receive(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """`POST $process-message`: `headers` with lower-case names."""
        key = headers.get("idempotency-key") or None
        digest = hashlib.sha256(body).hexdigest()

        def answer(result: Answer, outcome: str) -> Answer:
            receipt = Receipt(
                idempotency_key=key,
                received_at=self._time.now(),
                status_code=result.status_code,
                outcome=outcome,
                request_id=headers.get("x-request-id"),
                correlation_id=headers.get("x-correlation-id"),
                body_sha256=digest,
            )
            with self._lock:
                self._receipts.append(receipt)
                if key is not None:
                    self._receipt_counts[key] = self._receipt_counts.get(key, 0) + 1
            log.info("order receipt: key=%s status=%s outcome=%s", key, result.status_code, outcome)
            return result

        with self._lock:
            config = self._config
            if config.down:
                return answer(_unavailable(), "down")
            refused = self._check_credentials(headers.get("authorization"))
            if refused is not None:
                return answer(refused, "forbidden" if refused.status_code == 403 else "unauthorised")
            if config.throttle_next:
                self._config = config.updated({"throttle_next": config.throttle_next - 1})
                return answer(_throttled(config.retry_after_seconds), "throttled")
            if config.fail_next:
                self._config = config.updated({"fail_next": config.fail_next - 1})
                return answer(_failed(), "failed")
        if config.delay_seconds:
            # Real time, whatever the lifecycle runs on: this is what makes clients time out.
            await asyncio.sleep(config.delay_seconds)
        # From here on nothing awaits, so two requests with one key cannot both create an order.
        with self._lock:
            result, outcome = self._take(key, body, digest, headers)
        return answer(result, outcome)

    def _check_credentials(self, authorization: str | None) -> Answer | None:
        config = self._config
        if config.required_token is None and config.client_id is None:
            return _forbidden() if config.forbidden else None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _unauthorised('Bearer realm="orders"')
        valid = config.required_token is not None and secrets.compare_digest(token, config.required_token)
        expiry = self._tokens.get(token)
        if not valid and (expiry is None or expiry < time.monotonic()):
            return _unauthorised('Bearer realm="orders", error="invalid_token"')
        return _forbidden() if config.forbidden else None

    def _take(
        self, key: str | None, body: bytes, digest: str, headers: Mapping[str, str]
    ) -> tuple[Answer, str]:
        if key is None:
            missing = _refusal(400, "required", "missing-idempotency-key", "Send an Idempotency-Key header")
            return missing, "invalid"
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in _JSON_MEDIA_TYPES:
            wrong_type = _refusal(
                415, "not-supported", "unsupported-media-type", "Send application/fhir+json"
            )
            return wrong_type, "invalid"
        if key in self._answers:
            first_digest, first_answer = self._answers[key]
            if first_digest != digest:
                reused = _refusal(
                    409, "conflict", "idempotency-key-reused", "Key reused with another message"
                )
                return reused, "conflict"
            return first_answer, "duplicate"
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _refusal(400, "structure", "invalid-json", "The body is not valid JSON"), "invalid"

        result = validate_message(document)
        if result.cancellation is not None:
            return self._cancel(key, digest, document, headers)
        if result.order is None:
            return Answer(status_for(result.issues), operation_outcome(result.issues)), "invalid"
        order = result.order
        config = self._config
        if order.performer_ods != config.ods:
            return _reason_refusal(422, WRONG_PROVIDER, f"This is {config.ods}"), "refused"

        existing = self.book.order(order.short_form_id)
        if existing is not None:
            if existing.message == body:
                self._answers[key] = self._answers[existing.key]
                return self._answers[key][1], "duplicate"
            clash = _refusal(409, "duplicate", "duplicate-prescription-id", "Prescription ID reused")
            return clash, "conflict"

        details = _OrderDetails(order.sender_ods, order.nhs_number, headers.get("x-correlation-id"))
        self._details[order.short_form_id] = details
        items = tuple(item.item_identifier for item in order.items)
        intake = self.book.take(key=key, short_form_id=order.short_form_id, item_ids=items, message=body)
        if intake.outcome is Intake.REFUSED and intake.reason is not None:
            refusal = _reason_refusal(422, intake.reason)
            self._answers[key] = (digest, refusal)
            return refusal, "refused"
        ok = Answer(200, success_outcome(f"Order {order.short_form_id} received by {config.ods}"))
        self._answers[key] = (digest, ok)
        return ok, "accepted"

    def _cancel(
        self, key: str, digest: str, document: dict[str, Any], headers: Mapping[str, str]
    ) -> tuple[Answer, str]:
        short_form_id, named_items = _cancel_targets(document)
        refusal = self.book.cancel(short_form_id or "", named_items or None)
        if refusal is not None:
            # Refused at once (422): the refusal is the answer, no status Task follows.
            return _reason_refusal(422, refusal), "refused"
        ok = Answer(200, success_outcome(f"Cancellation of {short_form_id} accepted by {self._config.ods}"))
        self._answers[key] = (digest, ok)
        return ok, "cancelled"

    # --- lifecycle and status reports ------------------------------------------------------------

    def _log_events(self, events: list[LifecycleEvent]) -> None:
        """One status Task per item per step, logged the moment it happens (the book's lock is held)."""
        target = str(self._config.status_url) if self._config.status_url else None
        for event in events:
            details = self._details.get(event.short_form_id)
            if event.status == CANCEL_REFUSED or details is None:
                continue  # a too-late cancellation is refused in the answer itself
            count = self._report_counts.get(event.short_form_id, 0) + 1
            self._report_counts[event.short_form_id] = count
            self._reports.append(
                StatusReport(
                    sequence=len(self._reports) + 1,
                    short_form_id=event.short_form_id,
                    item_id=event.item_id,
                    status=event.status,
                    task=status_task(
                        task_id=task_id(self._config.ods, event.short_form_id, event.item_id, count),
                        short_form_id=event.short_form_id,
                        item_id=event.item_id,
                        nhs_number=details.nhs_number,
                        provider_ods=self._config.ods,
                        status=event.status,
                        last_modified=event.occurred_at,
                        reason=event.reason,
                        window=event.window,
                        attempt=event.attempt,
                    ),
                    target=target,
                )
            )
            self._logged[event.sequence] = self._reports[-1]

    async def _deliver_events(self, events: list[LifecycleEvent]) -> None:
        """POST each event's logged Task to status_url, when there is one."""
        with self._lock:
            reports = [
                (report, self._details[event.short_form_id].correlation_id)
                for event in events
                if (report := self._logged.pop(event.sequence, None)) is not None
            ]
        for report, correlation_id in reports:
            if report.target is not None:
                await self._post_status(report, report.target, correlation_id)

    async def _post_status(self, report: StatusReport, target: str, correlation_id: str | None) -> None:
        """POST one Task to status_url, retrying with doubling backoff on transient failures."""
        assert self._http is not None, "start() not called"
        config = self._config
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if self._status_token is not None:
            headers["Authorization"] = f"Bearer {await asyncio.to_thread(self._status_token)}"
        elif config.status_token:
            headers["Authorization"] = f"Bearer {config.status_token}"
        if correlation_id:
            headers["X-Correlation-ID"] = correlation_id
        content = orjson.dumps(report.task)
        backoff = config.status_retry_seconds
        for attempt in range(1, config.status_retry_attempts + 1):
            status: int | None = None
            error: str | None = None
            try:
                response = await self._http.post(target, content=content, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            self._update_report(report, attempts=attempt, response_status=status, error=error)
            retryable = status is None or status in (408, 429) or status >= 500
            if (status is not None and 200 <= status < 300) or not retryable:
                return
            if attempt < config.status_retry_attempts:
                await self._time.sleep(backoff)
                backoff *= 2

    def _update_report(self, report: StatusReport, **changes: Any) -> None:
        with self._lock:
            for index in range(len(self._reports) - 1, -1, -1):
                if (
                    self._reports[index].sequence == report.sequence
                    and self._reports[index].task is report.task
                ):
                    self._reports[index] = replace(self._reports[index], **changes)
                    return


def capability_statement(ods: str, now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.date().isoformat(),
        "publisher": f"Homecare provider simulator ({ods})",
        "kind": "instance",
        "software": {"name": "homecare-gateway fhir-rest provider simulator"},
        "implementation": {"description": f"Simulated homecare provider {ods}"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "operation": [
                    {
                        "name": "process-message",
                        "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                    }
                ],
            }
        ],
    }


def _cancel_targets(document: dict[str, Any]) -> tuple[str | None, set[str]]:
    """The prescription ID and line items named by a prescription-order-update message."""
    short_form_id: str | None = None
    items: set[str] = set()
    for entry in document.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "MedicationRequest":
            continue
        group = resource.get("groupIdentifier")
        if isinstance(group, dict) and isinstance(group.get("value"), str):
            short_form_id = short_form_id or group["value"]
        for identifier in resource.get("identifier") or []:
            if isinstance(identifier, dict) and identifier.get("system") == ORDER_ITEM_NUMBER_SYSTEM:
                items.add(str(identifier.get("value")))
    return short_form_id, items


def _client_auth(authorization: str | None, form: Mapping[str, str]) -> tuple[str | None, str | None]:
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, client_secret = base64.b64decode(credentials).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return client_id, client_secret
    return form.get("client_id"), form.get("client_secret")


def _outcome(
    severity: str, issue_type: str, code: str, text: str, diagnostics: str | None = None
) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": issue_type,
                "details": {
                    "coding": [{"system": codes.STATUS_REASON_SYSTEM, "code": code, "display": text}]
                },
                "diagnostics": diagnostics or text,
            }
        ],
    }


def _refusal(status_code: int, issue_type: str, code: str, text: str) -> Answer:
    return Answer(status_code, _outcome("error", issue_type, code, text))


def _reason_refusal(status_code: int, reason: Reason, detail: str | None = None) -> Answer:
    diagnostics = f"{reason.display}. {detail}" if detail else reason.display
    return Answer(status_code, _outcome("error", "business-rule", reason.code, reason.display, diagnostics))


def _unavailable() -> Answer:
    return Answer(
        503,
        _outcome("error", "transient", "unavailable", "The provider's system is unavailable"),
        headers={"Retry-After": "5"},
    )


def _throttled(retry_after: int) -> Answer:
    return Answer(
        429,
        _outcome("error", "throttled", "too-many-requests", "Too many requests"),
        headers={"Retry-After": str(retry_after)},
    )


def _failed() -> Answer:
    return Answer(500, _outcome("fatal", "exception", "server-error", "The provider's system failed"))


def _unauthorised(challenge: str) -> Answer:
    return Answer(
        401,
        _outcome("error", "login", "unauthorised", "Missing or invalid access token"),
        headers={"WWW-Authenticate": challenge},
    )


def _forbidden() -> Answer:
    return Answer(
        403, _outcome("error", "forbidden", "forbidden", "This client may not send orders to this provider")
    )
