"""The trust role: the suite plays the gateway for a trust's system under test. It serves a token
endpoint and `$process-message` at the target address, tells the operator (or a script) the
scenarios to perform, and keeps everything that arrives for the tests to judge."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conformance.config import ConfigError, TrustConfig
from conformance.model import Evidence
from conformance.wire import Answer, IncomingRequest, LocalEndpoint, received_exchange

SCENARIOS = (
    ("S1", "Send a new homecare prescription (prescription type 1201) with one line item."),
    (
        "S2",
        "Send a second new prescription with two to four line items. The suite answers its first attempt "
        "with 503 Service Unavailable: your system must send it again, unchanged.",
    ),
    ("S3", "Cancel every line item of the prescription from S1 (a prescription-order-update message)."),
)


@dataclass(frozen=True)
class TokenRequest:
    form: dict[str, str]
    issued: str | None  # the token the suite gave, if it did


@dataclass(frozen=True)
class ArrivedMessage:
    body: bytes
    headers: dict[str, str]
    bearer: str | None
    answered: int
    at: float

    def bundle(self) -> dict[str, Any] | None:
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    @property
    def identifier(self) -> str | None:
        bundle = self.bundle() or {}
        value = (
            (bundle.get("identifier") or {}).get("value")
            if isinstance(bundle.get("identifier"), dict)
            else None
        )
        return str(value) if value else None

    @property
    def event(self) -> str | None:
        try:
            return str((self.bundle() or {})["entry"][0]["resource"]["eventCoding"]["code"])
        except (KeyError, IndexError, TypeError):
            return None


@dataclass
class Collected:
    tokens: list[TokenRequest] = field(default_factory=list)
    messages: list[ArrivedMessage] = field(default_factory=list)
    exchanges: list[Any] = field(default_factory=list)

    def orders(self) -> list[list[ArrivedMessage]]:
        """New prescriptions, in order of first arrival, each with its repeats."""
        grouped: dict[str, list[ArrivedMessage]] = {}
        for message in self.messages:
            if message.event == "prescription-order" and message.identifier:
                grouped.setdefault(message.identifier, []).append(message)
        return list(grouped.values())

    def cancellations(self) -> list[ArrivedMessage]:
        return [m for m in self.messages if m.event == "prescription-order-update"]


class TrustSession:
    """State of one trust-role run: the fake gateway and what arrived at it."""

    def __init__(self, target: str, config: TrustConfig, *, say: Callable[[str], None]) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ConfigError(
                f"trust role: --target must be http://HOST:PORT, the address to serve as the gateway; got {target!r}"
            )
        if config.jwks is None or config.client_id is None or config.ods is None:
            raise ConfigError(
                "trust role: the configuration needs [trust] client_id, ods and jwks (the system's public keys)"
            )
        self.config = config
        self.target = target.rstrip("/")
        self.token_url = f"{self.target}/auth/token"
        self.say = say
        self.collected = Collected()
        self._issued: set[str] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.endpoint = LocalEndpoint(self._handle, host=parts.hostname, port=parts.port)
        self.evidence = Evidence()

    def __enter__(self) -> TrustSession:
        self.endpoint.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self.endpoint.close()

    def begin(self, evidence: Evidence) -> None:
        self.evidence = evidence

    # --- the fake gateway ----------------------------------------------------------------------

    def _handle(self, request: IncomingRequest) -> Answer:
        path = urlsplit(request.path).path
        if request.method == "GET" and path == "/.well-known/smart-configuration":
            answer = Answer.json(
                200,
                {
                    "token_endpoint": self.token_url,
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                },
                "application/json",
            )
        elif request.method == "POST" and path == "/auth/token":
            answer = self._token(request)
        elif request.method == "POST" and path.endswith("/$process-message"):
            answer = self._message(request)
        else:
            answer = Answer.json(404, _outcome("error", "not-found", "Not served by the conformance suite"))
        with self._changed:
            self.collected.exchanges.append(
                received_exchange(request, answer, f"{self.target}{request.path}")
            )
            self._changed.notify_all()
        return answer

    def _token(self, request: IncomingRequest) -> Answer:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        # The suite issues a token to any well-formed request and judges the assertion afterwards
        # (TRUST-AUTH tests), so that one mistake does not hide the rest of the trust's behaviour.
        token = secrets.token_urlsafe(24) if form.get("client_assertion") else None
        with self._lock:
            self.collected.tokens.append(TokenRequest(form, token))
            if token:
                self._issued.add(token)
        if token is None:
            return Answer.json(
                400,
                {"error": "invalid_request", "error_description": "client_assertion is missing"},
                "application/json",
                Cache_Control="no-store",
            )
        body = {"access_token": token, "token_type": "bearer", "expires_in": 300}
        return Answer.json(200, body, "application/json", Cache_Control="no-store")

    def _message(self, request: IncomingRequest) -> Answer:
        bearer = request.headers.get("authorization", "")
        token = bearer[7:] if bearer.lower().startswith("bearer ") else None
        arrived = ArrivedMessage(request.body, request.headers, token, 0, time.monotonic())
        with self._lock:
            earlier = [
                m for m in self.collected.messages if m.identifier and m.identifier == arrived.identifier
            ]
            orders_before = {m.identifier for m in self.collected.messages if m.event == "prescription-order"}
            second_order_first_try = (
                arrived.event == "prescription-order" and not earlier and len(orders_before) == 1
            )
        if second_order_first_try:
            answer = Answer.json(
                503, _outcome("error", "transient", "Scenario S2: please try again"), Retry_After="1"
            )
        else:
            # A repeat of an accepted message gets the same answer, as the gateway gives it.
            location = f"/fhir/Bundle/{uuid.uuid5(uuid.NAMESPACE_URL, str(arrived.identifier))}"
            answer = Answer(
                200,
                self._accepted_body(arrived.identifier),
                "application/fhir+json",
                (("Location", location),),
            )
        with self._lock:
            self.collected.messages.append(
                ArrivedMessage(arrived.body, arrived.headers, arrived.bearer, answer.status, arrived.at)
            )
        return answer

    @staticmethod
    def _accepted_body(identifier: str | None) -> bytes:
        return json.dumps(_outcome("information", "informational", f"Message {identifier} accepted")).encode()

    def issued(self, token: str | None) -> bool:
        with self._lock:
            return token is not None and token in self._issued

    # --- the session ---------------------------------------------------------------------------

    def _complete(self) -> bool:
        orders = self.collected.orders()
        retried = len(orders) >= 2 and any(m.answered == 200 for m in orders[1])
        return retried and self.collected.cancellations() != []

    def collect(self) -> None:
        """Tell the operator the scenarios, then wait until they are done (or time runs out)."""
        self.say(f"The suite is the gateway at {self.target} (token endpoint {self.token_url}).")
        self.say(
            f"Point the trust system {self.config.client_id} (ODS {self.config.ods}) at it and perform, in order:"
        )
        for name, text in SCENARIOS:
            self.say(f"  {name}: {text}")
        self.say(f"Waiting up to {self.config.wait_seconds:.0f} s...")
        deadline = time.monotonic() + self.config.wait_seconds
        with self._changed:
            while not self._complete() and time.monotonic() < deadline:
                self._changed.wait(timeout=0.5)
        # A trust may still be retrying; give a last message a moment to land.
        time.sleep(0.3)


def _outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
