"""The `pull` transport (README `pull`): nothing is sent; the suite serves, at --target, what a gateway
serves a pulling provider. `POST /auth/token` (a token for any request carrying a client assertion:
the assertion itself is not judged here), `GET /fhir/Task?owner=<ODS>&business-status=queued` (the
held orders' Tasks, each leased to the caller for `LEASE_SECONDS`, each naming its prescription
message in `input`), `business-status=cancel-requested`, `GET /fhir/Bundle/{id}` (the message as
the trust sent it) and `PUT /fhir/Task/{id}` (the provider's acknowledgement and every later status).

A send offers the order (or asks for the cancellation) and waits for the provider's first Task update
about it: `rejected` with `statusReason` is a refusal, any other status the acknowledgement."""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from conformance.config import ConfigError, ProviderConfig
from conformance.messages import HOMECARE_STATUS_SYSTEM, ITEM_SYSTEM, NHS_NUMBER_SYSTEM, ODS_SYSTEM, Message
from conformance.messages import PRESCRIPTION_ID_SYSTEM as PRESCRIPTION
from conformance.model import Evidence, Exchange
from conformance.roles.provider.base import Acknowledgement, ReportSink, StatusReport
from conformance.wire import Answer, IncomingRequest, LocalEndpoint, received_exchange

LEASE_SECONDS = 30.0
TASK_INPUT_SYSTEM = "https://homecare-gateway.nhs.uk/CodeSystem/task-input"


@dataclass
class _Item:
    task_id: str
    item: str
    order: Message
    owner: str
    status: str = "queued"
    leased_until: float = 0.0
    updates: list[tuple[dict[str, Any], Exchange]] = field(default_factory=list)

    def task(self) -> dict[str, Any]:
        request = next(
            (
                entry
                for entry in self.order.bundle["entry"]
                if entry["resource"]["resourceType"] == "MedicationRequest"
                and {"system": ITEM_SYSTEM, "value": self.item} in entry["resource"]["identifier"]
            ),
            None,
        )
        task: dict[str, Any] = {
            "resourceType": "Task",
            "id": self.task_id,
            "status": "requested",
            "intent": "order",
            "basedOn": [{"identifier": {"system": PRESCRIPTION, "value": self.order.short_form_id}}],
            "focus": {"identifier": {"system": ITEM_SYSTEM, "value": self.item}},
            "for": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": self.order.nhs_number}},
            "owner": {"identifier": {"system": ODS_SYSTEM, "value": self.owner}},
            "businessStatus": {"coding": [{"system": HOMECARE_STATUS_SYSTEM, "code": self.status}]},
            "input": [
                {
                    "type": {"coding": [{"system": TASK_INPUT_SYSTEM, "code": "prescription-message"}]},
                    "valueReference": {"reference": f"Bundle/{self.order.bundle['id']}"},
                }
            ],
        }
        if request is not None:
            task["focus"]["reference"] = f"MedicationRequest/{request['resource']['id']}"
        return task


class PullTransport:
    scheme: ClassVar[str] = "pull"
    status_over_http: ClassVar[bool] = False
    refusals_answered: ClassVar[bool] = False
    same_second_reports: ClassVar[bool] = False
    invalid_order: ClassVar[str] = ""  # the gateway offers only orders it validated: nothing to send

    def __init__(self, target: str, config: ProviderConfig, sends: Evidence) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ConfigError(
                f"provider role (pull): --target must be http://HOST:PORT, the address the suite serves "
                f"as the gateway; got {target!r}"
            )
        self.target = target.rstrip("/")
        self.config = config
        self.sends = sends
        self._items: dict[str, _Item] = {}  # by Task id
        self._keys: dict[str, Acknowledgement] = {}
        self._tokens: set[str] = set()
        self._changed = threading.Condition()
        self._sink: ReportSink | None = None
        self.endpoint = LocalEndpoint(self._handle, host=parts.hostname, port=parts.port)

    @property
    def status_address(self) -> str:
        return f"{self.target}/fhir/Task"

    def open(self, sink: ReportSink, listen: tuple[str, int] | None) -> None:
        self._sink = sink
        self.endpoint.__enter__()

    def close(self) -> None:
        if self._sink is not None:  # opened: its server thread runs
            self.endpoint.close()

    # --- sends ------------------------------------------------------------------------------------

    def send(
        self, message: Message, *, idempotency_key: str, request_id: str, invalid: bool = False
    ) -> Acknowledgement:
        if invalid:
            return Acknowledgement("not offered: the gateway offers only orders it validated", accepted=False)
        cancel = message.header()["eventCoding"]["code"] == "prescription-order-update"
        with self._changed:
            if idempotency_key in self._keys:
                # The same message again: the gateway holds one order; it is offered again (as when a
                # lease ends before the acknowledgement lands) and must not be taken twice.
                for item in self._items.values():
                    if item.item in message.item_ids:
                        item.leased_until = 0.0
                        item.status = "queued"
                return self._keys[idempotency_key]
            if cancel:
                targets = [i for i in self._items.values() if i.item in message.item_ids]
                if not targets:
                    return Acknowledgement(
                        "not offered: the gateway never delivered the order it cancels", accepted=False
                    )
                for item in targets:
                    item.status = "cancel-requested"
            else:
                targets = [
                    _Item(str(uuid.uuid4()), item, message, message.performer_ods)
                    for item in message.item_ids
                ]
                self._items.update({item.task_id: item for item in targets})
            seen = {item.task_id: len(item.updates) for item in targets}
        if message.performer_ods != self.config.ods:
            return Acknowledgement(
                f"offered only to {message.performer_ods}, not to {self.config.ods}", accepted=False
            )
        acknowledgement = self._wait_for_update(targets, seen, cancel=cancel)
        with self._changed:
            self._keys[idempotency_key] = acknowledgement
        return acknowledgement

    def _wait_for_update(
        self, targets: list[_Item], seen: dict[str, int], *, cancel: bool
    ) -> Acknowledgement:
        """The first update about an order; for a cancellation, the first `cancelled` (the lifecycle's
        other updates may cross it)."""
        deadline = time.monotonic() + self.config.ack_timeout_seconds
        with self._changed:
            while True:
                fresh = [u for i in targets for u in i.updates[seen[i.task_id] :]]
                answers = [u for u in fresh if _status(u[0]) == "cancelled"] if cancel else fresh
                if answers or time.monotonic() >= deadline:
                    break
                self._changed.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        if not answers:
            if cancel:
                statuses = [_status(task) for task, _ in fresh]
                return Acknowledgement(
                    f"not cancelled within {self.config.ack_timeout_seconds:g} s (updates: {statuses})",
                    accepted=False,
                )
            return Acknowledgement(
                f"not pulled and acknowledged within {self.config.ack_timeout_seconds:g} s", accepted=False
            )
        task, exchange = answers[0]
        status = _status(task)
        if status == "rejected":
            reason = task.get("statusReason") or {}
            text = reason.get("text") or next(
                (c.get("display") or c.get("code") for c in reason.get("coding", [])), None
            )
            return Acknowledgement(
                f"Task update 'rejected' ({text})" if text else "Task update 'rejected'",
                accepted=False,
                permanent_refusal=True,
                reason=text,
                exchange=exchange,
            )
        return Acknowledgement(f"Task update {status!r}", accepted=True, exchange=exchange)

    # --- the gateway the provider pulls from -----------------------------------------------------

    def _handle(self, request: IncomingRequest) -> Answer:
        parts = urlsplit(request.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        report: StatusReport | None = None
        if request.method == "POST" and path == "/auth/token":
            answer = self._token(request)
        elif not self._authorised(request):
            answer = _outcome(401, "login", "A bearer token from the suite's /auth/token is required")
        elif request.method == "GET" and path == "/fhir/Task":
            answer = self._search(query)
        elif request.method == "GET" and path.startswith("/fhir/Bundle/"):
            answer = self._bundle(path.rsplit("/", 1)[1])
        elif request.method == "PUT" and path.startswith("/fhir/Task/"):
            answer, report = self._update(path.rsplit("/", 1)[1], request)
        else:
            answer = _outcome(404, "not-found", "Not served by the conformance suite")
        exchange = received_exchange(request, answer, f"{self.target}{request.path}")
        if self._sink is not None:
            self._sink([report] if report else [], exchange)
        if report is not None:
            with self._changed:
                item = self._items.get(path.rsplit("/", 1)[1])
                if item is not None:
                    item.updates.append((report.task, exchange))
                self._changed.notify_all()
        return answer

    def _token(self, request: IncomingRequest) -> Answer:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if not form.get("client_assertion"):
            return Answer.json(
                400,
                {"error": "invalid_request", "error_description": "client_assertion is missing"},
                "application/json",
            )
        token = secrets.token_urlsafe(24)
        with self._changed:
            self._tokens.add(token)
        body = {"access_token": token, "token_type": "bearer", "expires_in": 300}
        return Answer.json(200, body, "application/json", Cache_Control="no-store")

    def _authorised(self, request: IncomingRequest) -> bool:
        bearer = request.headers.get("authorization", "")
        with self._changed:
            return bearer.lower().startswith("bearer ") and bearer[7:] in self._tokens

    def _search(self, query: dict[str, str]) -> Answer:
        owner, status = query.get("owner"), query.get("business-status")
        if not owner or not status:
            return _outcome(400, "required", "Search with owner and business-status, as the README says")
        now = time.monotonic()
        with self._changed:
            found = [
                item
                for item in self._items.values()
                if item.owner == owner
                and item.status == status
                and (status != "queued" or item.leased_until <= now)
            ]
            if status == "queued":
                leased = {item.order.short_form_id for item in found}
                for item in self._items.values():
                    if item.order.short_form_id in leased and item.status == "queued":
                        item.leased_until = now + LEASE_SECONDS
            tasks = [item.task() for item in found]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(tasks),
            "entry": [{"fullUrl": f"{self.target}/fhir/Task/{t['id']}", "resource": t} for t in tasks],
        }
        return Answer.json(200, bundle)

    def _bundle(self, bundle_id: str) -> Answer:
        with self._changed:
            order = next((i.order for i in self._items.values() if i.order.bundle["id"] == bundle_id), None)
        if order is None:
            return _outcome(404, "not-found", "No such Bundle")
        return Answer(200, order.body(), "application/fhir+json")

    def _update(self, task_id: str, request: IncomingRequest) -> tuple[Answer, StatusReport | None]:
        with self._changed:
            item = self._items.get(task_id)
        if item is None:
            return _outcome(404, "not-found", "No such Task"), None
        try:
            task = json.loads(request.body)
        except ValueError:
            return _outcome(400, "structure", "The body is not JSON"), None
        if not isinstance(task, dict) or task.get("resourceType") != "Task":
            return _outcome(400, "structure", "Expected a Task"), None
        status = _status(task)
        with self._changed:
            # A cancel request stands until the provider answers it with `cancelled` (README pull).
            if status and (item.status != "cancel-requested" or status == "cancelled"):
                item.status = status
        return Answer.json(200, task), StatusReport(task, True, time.monotonic())


def _status(task: dict[str, Any]) -> str | None:
    codings = (task.get("businessStatus") or {}).get("coding") or [{}]
    code = codings[0].get("code") if isinstance(codings[0], dict) else None
    return str(code) if code else None


def _outcome(status: int, code: str, text: str) -> Answer:
    return Answer.json(
        status,
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}],
        },
    )
