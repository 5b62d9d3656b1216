"""What the gateway role's tests share: the clients the suite signs in as, their tokens, the
provider's system it plays (orders arrive there), a subscriber endpoint, and orders it has sent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from conformance.assertions import ASSERTION_TYPE
from conformance.checks import expect, json_body
from conformance.config import Client, GatewayConfig
from conformance.messages import PRESCRIPTION_ID_SYSTEM, Message, MessageBuilder, status_task
from conformance.model import Evidence, Failed, Skipped
from conformance.wire import Answer, IncomingRequest, LocalEndpoint, RecordingClient, received_exchange

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PROCESS_MESSAGE = "/fhir/$process-message"


def fhir_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Delivery:
    """A message the gateway delivered to the provider's system the suite plays."""

    at: float
    headers: dict[str, str]
    body: bytes
    event: str
    short_form_id: str
    answered: int


class ProviderSystem:
    """The homecare provider's FHIR REST endpoint, played by the suite: it takes orders (or holds
    some with 503, or refuses a cancellation) and remembers every delivery."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.hold: set[str] = set()
        self.refuse_cancel: set[str] = set()
        self.evidence: Evidence | None = None
        self.endpoint = LocalEndpoint(self._handle, host=host, port=port)

    def _handle(self, request: IncomingRequest) -> Answer:
        if request.method == "GET" and request.path.endswith("/metadata"):
            return Answer.json(
                200, {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance"}
            )
        if request.method != "POST" or not request.path.endswith("/$process-message"):
            return Answer.json(404, _outcome("error", "not-found", "No such route"))
        event, short_form = _message_facts(request.body)
        if short_form in self.hold:
            # A long Retry-After keeps the held order waiting between attempts, so a gateway's
            # circuit breaker is not tripped by the holding (and a cancel rarely meets a send).
            answer = Answer.json(
                503, _outcome("error", "transient", "Held by the conformance suite"), Retry_After="120"
            )
        elif event == "prescription-order-update" and short_form in self.refuse_cancel:
            answer = Answer.json(
                422, _outcome("error", "business-rule", "Too late to cancel: already dispensed")
            )
        else:
            answer = Answer.json(200, _outcome("information", "informational", "Received"))
        with self._lock:
            self.deliveries.append(
                Delivery(time.monotonic(), request.headers, request.body, event, short_form, answer.status)
            )
            if self.evidence is not None:
                self.evidence.exchanges.append(
                    received_exchange(request, answer, f"{self.endpoint.url}{request.path}")
                )
        return answer

    def of(self, short_form_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.short_form_id == short_form_id]


def _outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }


def _message_facts(body: bytes) -> tuple[str, str]:
    """The event code and short-form prescription ID of a message, or empty strings."""
    try:
        bundle = json.loads(body)
        event = str(bundle["entry"][0]["resource"]["eventCoding"]["code"])
        request = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
        )
        return event, str(request["groupIdentifier"]["value"])
    except (ValueError, KeyError, TypeError, StopIteration, IndexError):
        return "", ""


@dataclass(frozen=True)
class Notification:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class Subscriber:
    """A trust's rest-hook endpoint on loopback (plain HTTP: the gateway must allow that in development)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[Notification] = []
        self.evidence: Evidence | None = None
        self.endpoint = LocalEndpoint(self._handle)

    def _handle(self, request: IncomingRequest) -> Answer:
        answer = Answer(200, b"", "text/plain")
        with self._lock:
            self.received.append(Notification(time.monotonic(), request.path, request.headers, request.body))
            if self.evidence is not None:
                self.evidence.exchanges.append(
                    received_exchange(request, answer, f"{self.endpoint.url}{request.path}")
                )
        return answer

    def snapshot(self, path: str | None = None) -> list[Notification]:
        """What arrived (at one endpoint path, when given), in arrival order."""
        with self._lock:
            return [n for n in self.received if path is None or n.path == path]


class GatewayRun:
    """State of one run of the gateway role against one target."""

    def __init__(self, target: str, config: GatewayConfig) -> None:
        self.target = target.rstrip("/")
        self.config = config
        self.http = RecordingClient(self.target)
        self._tokens: dict[tuple[str, str | None], str] = {}
        self._orders: dict[str, tuple[Message, httpx.Response]] = {}
        self._builders: dict[str, MessageBuilder] = {}
        self._token_url: str | None = config.token_url
        self.provider_system: ProviderSystem | None = None
        if config.provider_listen is not None:
            self.provider_system = ProviderSystem(*config.provider_listen)
            self.provider_system.endpoint.__enter__()
        self._subscriber: Subscriber | None = None
        self.evidence = Evidence()

    # --- lifecycle -----------------------------------------------------------------------------

    def begin(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.http.evidence = evidence
        if self.provider_system is not None:
            self.provider_system.evidence = evidence
        if self._subscriber is not None:
            self._subscriber.evidence = evidence

    def close(self) -> None:
        self.http.close()
        if self.provider_system is not None:
            self.provider_system.endpoint.close()
        if self._subscriber is not None:
            self._subscriber.endpoint.close()

    def check_reachable(self) -> None:
        """Raise TargetUnreachableError (the suite cannot run) unless the target answers HTTP at all."""
        self.http.get("/fhir/metadata")

    # --- clients and tokens --------------------------------------------------------------------

    def client(self, name: str) -> Client:
        client: Client | None = getattr(self.config, name)
        if client is None:
            raise Skipped(f"no '{name}' client configured ([gateway.clients.{name}] in the configuration)")
        return client

    @property
    def token_url(self) -> str:
        """The token URL the gateway publishes: every assertion's `aud`."""
        if self._token_url is None:
            response = self.http.get("/.well-known/smart-configuration")
            document = json_body(response) if response.status_code == 200 else {}
            self._token_url = str(document.get("token_endpoint") or f"{self.target}/auth/token")
        return self._token_url

    @property
    def token_path(self) -> str:
        """Where the suite posts token requests: the published endpoint's path on the target."""
        return urlsplit(self.token_url).path or "/auth/token"

    def request_token(self, assertion: str | None, **form: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, **form}
        if assertion is not None:
            data["client_assertion"] = assertion
        return self.http.post(self.token_path, data=data)

    def token(self, name: str, scope: str | None = None) -> str:
        if (name, scope) not in self._tokens:
            client = self.client(name)
            response = self.request_token(
                client.identity.assertion(self.token_url), **({"scope": scope} if scope else {})
            )
            if response.status_code != 200:
                raise Failed(
                    f"client {client.identity.client_id} could not get an access token: HTTP {response.status_code}"
                    f" {response.text[:200]}"
                )
            self._tokens[(name, scope)] = str(json_body(response)["access_token"])
        return self._tokens[(name, scope)]

    def auth(self, name: str, scope: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(name, scope)}"}

    # --- messages ------------------------------------------------------------------------------

    def builder(self, name: str = "trust_a") -> MessageBuilder:
        if name not in self._builders:
            self._builders[name] = MessageBuilder(self.client(name).ods)
        return self._builders[name]

    @property
    def provider_ods(self) -> str:
        return self.client("provider").ods

    def send(self, name: str, message: Message | bytes, **headers: str) -> httpx.Response:
        body = message.body() if isinstance(message, Message) else message
        return self.http.post(
            PROCESS_MESSAGE, content=body, headers={**FHIR_JSON, **self.auth(name), **headers}
        )

    def new_order(self, name: str = "trust_a", *, items: int = 1) -> Message:
        return self.builder(name).order(self.provider_ods, items=items)

    def accepted_order(
        self, key: str, name: str = "trust_a", *, items: int = 1, hold: bool = False
    ) -> tuple[Message, httpx.Response]:
        """An order the gateway accepted, sent once per key and shared by the tests that need one."""
        if key not in self._orders:
            order = self.new_order(name, items=items)
            if hold:
                self.require_provider_system().hold.add(order.short_form_id)
            response = self.send(name, order)
            expect(
                response.status_code == 200,
                f"a valid order was refused (HTTP {response.status_code}): {response.text[:300]}",
            )
            self._orders[key] = (order, response)
        return self._orders[key]

    # --- status --------------------------------------------------------------------------------

    def require_provider_system(self) -> ProviderSystem:
        if self.provider_system is None:
            raise Skipped(
                "the suite is not playing the provider's system ([gateway] provider_listen), so orders "
                "cannot reach 'sent'"
            )
        return self.provider_system

    def tasks(self, name: str, order: Message) -> list[dict[str, Any]]:
        """The Tasks `name` sees for the order, by prescription ID."""
        response = self.http.get(
            "/fhir/Task",
            params={"based-on:identifier": f"{PRESCRIPTION_ID_SYSTEM}|{order.short_form_id}"},
            headers=self.auth(name),
        )
        expect(response.status_code == 200, f"Task search answered HTTP {response.status_code}")
        bundle = json_body(response)
        return [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Task"
        ]

    def wait_for(self, description: str, probe: Callable[[], bool], seconds: float | None = None) -> None:
        deadline = time.monotonic() + (seconds or self.config.wait_seconds)
        while not probe():
            if time.monotonic() > deadline:
                raise Failed(
                    f"timed out after {seconds or self.config.wait_seconds:.0f} s waiting for {description}"
                )
            time.sleep(0.2)

    def item_status(self, name: str, order: Message, position: int = 0) -> str | None:
        for task in self.tasks(name, order):
            if task_item(task) == order.item_ids[position]:
                return business_status(task)
        return None

    def wait_for_sent(self, order: Message) -> None:
        """Until the gateway has delivered the order and shows every item `sent`."""
        provider = self.require_provider_system()
        self.wait_for(
            f"the gateway to deliver {order.short_form_id} to the provider",
            lambda: any(d.event == "prescription-order" for d in provider.of(order.short_form_id)),
        )
        self.wait_for(
            "every item to be 'sent'",
            lambda: all(self.item_status("trust_a", order, n) == "sent" for n in range(len(order.item_ids))),
        )

    def report(
        self,
        order: Message,
        position: int,
        status: str,
        when: datetime,
        *,
        name: str = "provider",
        **extra: Any,
    ) -> httpx.Response:
        task = status_task(
            order, position, status, fhir_instant(when), owner_ods=extra.pop("owner_ods", None), **extra
        )
        return self.http.post(
            "/fhir/Task", content=json.dumps(task).encode(), headers={**FHIR_JSON, **self.auth(name)}
        )

    # --- subscriptions -------------------------------------------------------------------------

    @property
    def subscriber(self) -> Subscriber:
        if self._subscriber is None:
            self._subscriber = Subscriber()
            self._subscriber.endpoint.__enter__()
            self._subscriber.evidence = self.evidence
        return self._subscriber

    def gateway_keys(self) -> KeySet:
        response = self.http.get("/.well-known/jwks.json")
        expect(
            response.status_code == 200, f"GET /.well-known/jwks.json answered HTTP {response.status_code}"
        )
        try:
            return KeySet.import_key_set(json_body(response))
        except (JoseError, ValueError, TypeError) as exc:
            raise Failed(f"the gateway's JWKS cannot be read: {exc}") from exc


def verify_detached(signature: str, body: bytes, keys: KeySet) -> str | None:
    """None when `signature` is a valid ES256 detached JWS of `body` by one of `keys`; else why not."""
    parts = signature.split(".")
    if len(parts) != 3 or parts[1] != "":
        return "X-Signature is not a compact JWS with detached content (header..signature)"
    try:
        jws.deserialize_compact(signature, keys, algorithms=["ES256"], payload=body)
    except JoseError as exc:
        return f"the signature does not verify: {type(exc).__name__}: {exc}"
    return None


def task_item(task: dict[str, Any]) -> str | None:
    value = (task.get("focus") or {}).get("identifier", {}).get("value")
    return str(value) if value else None


def business_status(task: dict[str, Any]) -> str | None:
    codings = (task.get("businessStatus") or {}).get("coding") or [{}]
    code = codings[0].get("code")
    return str(code) if code else None


def now_minus(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
