"""The provider role: the suite plays the gateway toward a provider's system. It sends orders and a
cancellation through the provider's transport, serves the status API the provider reports to
(`POST /fhir/Task` at the listen address), and keeps the acknowledgements and reports for the tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from conformance.config import ConfigError, ProviderConfig
from conformance.identifiers import wrong_check_character
from conformance.messages import Message, MessageBuilder
from conformance.model import Evidence, Exchange
from conformance.roles.provider.transports import TRANSPORTS, Acknowledgement, OrderTransport
from conformance.wire import Answer, IncomingRequest, LocalEndpoint, RecordingClient, received_exchange

TERMINAL = {"delivered", "rejected", "cancelled", "expired"}


@dataclass(frozen=True)
class Sent:
    name: str
    message: Message
    key: str
    acknowledgement: Acknowledgement
    exchange: Exchange | None


@dataclass(frozen=True)
class StatusReport:
    task: dict[str, Any]
    authorised: bool
    at: float

    @property
    def item(self) -> str | None:
        value = ((self.task.get("focus") or {}).get("identifier") or {}).get("value")
        return str(value) if value else None

    @property
    def status(self) -> str | None:
        codings = (self.task.get("businessStatus") or {}).get("coding") or [{}]
        code = codings[0].get("code") if isinstance(codings[0], dict) else None
        return str(code) if code else None


@dataclass
class Exercise:
    sent: dict[str, Sent] = field(default_factory=dict)
    reports: list[StatusReport] = field(default_factory=list)
    exchanges: list[Any] = field(default_factory=list)

    def reports_for(self, item: str) -> list[StatusReport]:
        return [r for r in self.reports if r.item == item]


class ProviderSession:
    def __init__(
        self,
        target: str,
        config: ProviderConfig,
        *,
        listen: tuple[str, int] | None,
        say: Callable[[str], None],
    ) -> None:
        if urlsplit(target).scheme not in ("http", "https"):
            raise ConfigError(f"provider role: --target must be the provider's FHIR base URL; got {target!r}")
        if config.ods is None:
            raise ConfigError(
                "provider role: the configuration needs [provider] ods (the provider's ODS code)"
            )
        if config.transport not in TRANSPORTS:
            raise ConfigError(
                f"provider role: transport {config.transport!r} is not one of {', '.join(TRANSPORTS)}"
            )
        address = listen or config.listen
        if address is None:
            raise ConfigError(
                "provider role: give --listen HOST:PORT (or [provider] listen) for the status API"
            )
        self.config = config
        self.target = target
        self.say = say
        self.http = RecordingClient(target)
        self.transport: OrderTransport = TRANSPORTS[config.transport](target, config, self.http)
        self.builder = MessageBuilder(config.trust_ods)
        self.exercise_log = Exercise()
        self._lock = threading.Lock()
        self.endpoint = LocalEndpoint(self._status_api, host=address[0], port=address[1])
        self.evidence = Evidence()
        self._sends = Evidence()

    def __enter__(self) -> ProviderSession:
        self.endpoint.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self.endpoint.close()
        self.transport.close()
        self.http.close()

    def begin(self, evidence: Evidence) -> None:
        self.evidence = evidence

    @property
    def status_url(self) -> str:
        return f"{self.endpoint.url}/fhir/Task"

    def _status_api(self, request: IncomingRequest) -> Answer:
        path = urlsplit(request.path).path
        if request.method not in ("POST", "PUT") or not path.startswith("/fhir/Task"):
            answer = Answer.json(
                404, _outcome("error", "not-found", "The suite's status API takes POST /fhir/Task")
            )
        else:
            answer = self._take_report(request)
        with self._lock:
            self.exercise_log.exchanges.append(
                received_exchange(request, answer, f"{self.endpoint.url}{request.path}")
            )
        return answer

    def _take_report(self, request: IncomingRequest) -> Answer:
        expected = f"Bearer {self.config.status_token}" if self.config.status_token else None
        authorised = expected is None or request.headers.get("authorization") == expected
        try:
            task = json.loads(request.body)
        except ValueError:
            return Answer.json(400, _outcome("error", "structure", "The body is not JSON"))
        if not isinstance(task, dict) or task.get("resourceType") != "Task":
            return Answer.json(400, _outcome("error", "structure", "Expected a Task"))
        with self._lock:
            self.exercise_log.reports.append(StatusReport(task, authorised, time.monotonic()))
        if not authorised:
            return Answer.json(
                401, _outcome("error", "login", "The status report's bearer token is not the one configured")
            )
        return Answer.json(200, task)

    # --- the exercise --------------------------------------------------------------------------

    def _send(self, name: str, message: Message, key: str | None = None) -> Sent:
        key = key or str(uuid.uuid4())
        acknowledgement = self.transport.send(
            message.body(), idempotency_key=key, request_id=str(uuid.uuid4())
        )
        exchange = self._sends.exchanges[-1] if self._sends.exchanges else None
        sent = Sent(name, message, key, acknowledgement, exchange)
        self.exercise_log.sent[name] = sent
        return sent

    def exercise(self) -> None:
        """Send the orders and cancellation every test judges, then wait for the status reports."""
        ods = str(self.config.ods)
        self.say(
            f"The suite plays the gateway toward {self.target} ({self.config.transport}); "
            f"status reports go to {self.status_url}"
        )
        self.http.evidence = self._sends
        first = self._send("order", self.builder.order(ods))
        self._send("repeat", first.message, key=first.key)
        changed = first.message.copy()
        changed.entries("MedicationRequest")[0]["dosageInstruction"][0]["text"] = "Changed under the same key"
        self._send("same-key-other-bytes", changed, key=first.key)
        cancelled = self._send("to-cancel", self.builder.order(ods, items=2))
        self._send("cancellation", self.builder.cancellation(cancelled.message))
        self._send("other-provider", self.builder.order("ZZ9ZZ"))
        broken = self.builder.order(ods)
        for request in broken.entries("MedicationRequest"):
            request["groupIdentifier"]["value"] = wrong_check_character(broken.short_form_id)
        self._send("invalid", broken)
        self._send("unknown-cancellation", self.builder.cancellation(self.builder.order(ods)))
        taken = [sent for sent in (first, cancelled) if sent.acknowledgement.accepted]
        self._wait_for_reports([item for sent in taken for item in sent.message.item_ids])

    def _wait_for_reports(self, items: list[str]) -> None:
        if not items:
            return  # nothing was taken, so nothing will be reported
        self.say(f"Waiting up to {self.config.wait_seconds:.0f} s for status reports...")
        deadline = time.monotonic() + self.config.wait_seconds
        while time.monotonic() < deadline:
            with self._lock:
                done = all(
                    any(r.status in TERMINAL for r in self.exercise_log.reports_for(item)) for item in items
                )
            if done:
                return
            time.sleep(0.2)


def _outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
