"""The provider role: the suite plays the gateway toward a provider's system. It sends orders and a
cancellation through the provider's transport, takes the status the provider reports (its FHIR status
API, `POST /fhir/Task` at the listen address, for `fhir-rest`; the transport's own listener or folder
otherwise), and keeps the acknowledgements and reports for the tests."""

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
from conformance.messages import Message, MessageBuilder
from conformance.model import Evidence, Exchange
from conformance.roles.provider.base import Acknowledgement, OrderTransport, StatusReport
from conformance.roles.provider.transports import TRANSPORTS
from conformance.wire import Answer, IncomingRequest, LocalEndpoint, received_exchange

__all__ = ["Exercise", "ProviderSession", "Sent", "StatusReport"]

TERMINAL = {"delivered", "rejected", "cancelled", "expired"}


@dataclass(frozen=True)
class Sent:
    name: str
    message: Message
    key: str
    acknowledgement: Acknowledgement
    exchange: Exchange | None


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
        if config.ods is None:
            raise ConfigError(
                "provider role: the configuration needs [provider] ods (the provider's ODS code)"
            )
        if config.transport not in TRANSPORTS:
            raise ConfigError(
                f"provider role: transport {config.transport!r} is not one of {', '.join(TRANSPORTS)}"
            )
        transport = TRANSPORTS[config.transport]
        self.address = listen or config.listen
        if self.address is None and transport.status_over_http:
            raise ConfigError(
                "provider role: give --listen HOST:PORT (or [provider] listen) for the status API"
            )
        self.config = config
        self.target = target
        self.say = say
        self._sends = Evidence()
        self.transport: OrderTransport = transport(target, config, self._sends)
        self.builder = MessageBuilder(config.trust_ods)
        self.exercise_log = Exercise()
        self._lock = threading.Lock()
        self.endpoint: LocalEndpoint | None = None
        if transport.status_over_http and self.address is not None:
            self.endpoint = LocalEndpoint(self._status_api, host=self.address[0], port=self.address[1])
        self.evidence = Evidence()

    def __enter__(self) -> ProviderSession:
        try:
            if self.endpoint is not None:
                self.endpoint.__enter__()
            self.transport.open(self._take_reports, self.address)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        self.transport.close()

    def begin(self, evidence: Evidence) -> None:
        self.evidence = evidence

    @property
    def status_url(self) -> str:
        if self.endpoint is not None:
            return f"{self.endpoint.url}/fhir/Task"
        return self.transport.status_address

    def _take_reports(self, reports: list[StatusReport], exchange: Exchange) -> None:
        """The transport's sink: reports it read in its own protocol, with the exchange that carried them."""
        with self._lock:
            self.exercise_log.reports.extend(reports)
            self.exercise_log.exchanges.append(exchange)

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
                received_exchange(
                    request, answer, f"{self.status_url.removesuffix('/fhir/Task')}{request.path}"
                )
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

    def _send(self, name: str, message: Message, key: str | None = None, *, invalid: bool = False) -> Sent:
        key = key or str(uuid.uuid4())
        acknowledgement = self.transport.send(
            message, idempotency_key=key, request_id=str(uuid.uuid4()), invalid=invalid
        )
        sent = Sent(name, message, key, acknowledgement, acknowledgement.exchange)
        self.exercise_log.sent[name] = sent
        return sent

    def exercise(self) -> None:
        """Send the orders and cancellation every test judges, then wait for the status reports."""
        ods = str(self.config.ods)
        self.say(
            f"The suite plays the gateway toward {self.target} ({self.config.transport}); "
            f"status reports go to {self.status_url}"
        )
        first = self._send("order", self.builder.order(ods))
        self._send("repeat", first.message, key=first.key)
        changed = first.message.copy()
        changed.entries("MedicationRequest")[0]["dosageInstruction"][0]["text"] = "Changed under the same key"
        self._send("same-key-other-bytes", changed, key=first.key)
        cancelled = self._send("to-cancel", self.builder.order(ods, items=2))
        self._send("cancellation", self.builder.cancellation(cancelled.message))
        self._send("other-provider", self.builder.order("ZZ9ZZ"))
        self._send("invalid", self.builder.order(ods), invalid=True)
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
