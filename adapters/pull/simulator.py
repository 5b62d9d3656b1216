"""A homecare provider that pulls its orders from the gateway, for the demo and for tests.

    with PullSimulator(PullSimulatorConfig(gateway_url=..., client_id=..., kid=..., algorithm="ES256"),
                       key=private_key) as provider:
        ...
        provider.orders(), provider.task_updates()

Every `poll_interval_seconds` it logs in as a provider client (a client assertion signed with its key,
exchanged at the gateway's token endpoint), searches `GET /fhir/Task?owner=<ODS>&business-status=queued`,
reads each new prescription (the Bundle named in `Task.input` when the gateway offers it, else each
item's `MedicationRequest`), takes it into the shared order book and acknowledges by updating each
item's Task (`PUT /fhir/Task/{id}`): `accepted`, then every lifecycle step, or `rejected` with the
reason. It also searches `business-status=cancel-requested` and answers each with `cancelled`, or with
the item's current status when it is too late. Knobs: `down` (no polling), `reject_rate`, the lifecycle
knobs, and `search_status` (which status to pull; `queued` is the contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from joserfc.jwk import ECKey, RSAKey
from pydantic import Field

from adapters.fhir_rest.status_tasks import status_task
from adapters.pull.tokens import SignedJwtTokens, TokenRefused
from adapters.simulation.background import BackgroundLoop
from adapters.simulation.lifecycle import LifecycleSettings, SimulationTime
from adapters.simulation.order_book import (
    CANCEL_REFUSED,
    BookedOrder,
    BookedProvider,
    Intake,
    LifecycleEvent,
)
from fhir_profiles.identifiers import (
    NHS_NUMBER_SYSTEM,
    ORDER_ITEM_NUMBER_SYSTEM,
    PRESCRIPTION_ORDER_NUMBER_SYSTEM,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
PRESCRIPTION_MESSAGE_INPUT = "prescription-message"
PROVIDER_SCOPE = "system/Task.rs system/Task.cu system/MedicationRequest.rs"


class PullSimulatorConfig(LifecycleSettings):
    gateway_url: str = Field(description="The gateway's base URL, e.g. http://127.0.0.1:8000")
    token_audience: str | None = Field(default=None, description="The token URL as the gateway publishes it")
    client_id: str
    kid: str
    algorithm: str = "ES256"
    down: bool = Field(default=False, description="Stop polling")
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    search_status: str = Field(default="queued", description="The business status of orders to pull")
    page_size: int = Field(default=50, ge=1, le=500)
    status_retry_attempts: int = Field(default=5, ge=1, le=20)
    status_retry_seconds: float = Field(default=0.5, ge=0)


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One Task update the provider sent, and the gateway's answer."""

    task_id: str
    item_id: str
    status: str
    http_status: int | None
    answer: str
    attempts: int


@dataclass(slots=True)
class _Item:
    task_id: str
    short_form_id: str
    item_id: str
    nhs_number: str


class PollingProvider(BookedProvider[PullSimulatorConfig]):
    def __init__(
        self, config: PullSimulatorConfig, *, key: RSAKey | ECKey, time_source: SimulationTime | None = None
    ) -> None:
        super().__init__(config, time_source=time_source)
        self._key = key
        self._items: dict[str, _Item] = {}
        self._updates: list[TaskUpdate] = []
        self._http: httpx.AsyncClient | None = None
        self._tokens: SignedJwtTokens | None = None

    def task_updates(self) -> list[TaskUpdate]:
        with self._lock:
            return list(self._updates)

    async def start(self) -> None:
        config = self._config
        base = config.gateway_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=base, timeout=15.0, headers={"Accept": FHIR_JSON})
        self._tokens = SignedJwtTokens(
            self._http,
            token_endpoint=f"{base}/auth/token",
            audience=config.token_audience or f"{base}/auth/token",
            client_id=config.client_id,
            key=self._key,
            kid=config.kid,
            algorithm=config.algorithm,
            scope=PROVIDER_SCOPE,
        )

    async def stop(self) -> None:
        await self.book.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def run(self) -> None:
        while True:
            if not self._config.down:
                try:
                    await self.poll_once()
                except (httpx.HTTPError, TokenRefused) as exc:
                    log.warning("pull poll failed: %s", type(exc).__name__)
            await asyncio.sleep(self._config.poll_interval_seconds)

    async def poll_once(self) -> int:
        """One round: new orders taken and acknowledged, cancellations answered. Returns orders seen."""
        tasks = await self._search(self._config.search_status)
        prescriptions: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            item = self._remember(task)
            prescriptions.setdefault(item.short_form_id, []).append(task)
        for short_form, group in prescriptions.items():
            await self._take(short_form, group)
        for task in await self._search("cancel-requested"):
            item = self._remember(task)
            self.book.cancel(item.short_form_id, [item.item_id])
        return len(prescriptions)

    async def _search(self, status: str) -> list[dict[str, Any]]:
        response = await self._request(
            "GET",
            "/fhir/Task",
            params={
                "owner": self._config.ods,
                "business-status": status,
                "_count": str(self._config.page_size),
            },
        )
        response.raise_for_status()
        bundle = response.json()
        return [entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry]

    def _remember(self, task: dict[str, Any]) -> _Item:
        item = _Item(
            task_id=str(task["id"]),
            short_form_id=_identifier(task.get("basedOn", [{}])[0], PRESCRIPTION_ORDER_NUMBER_SYSTEM),
            item_id=_identifier(task.get("focus", {}), ORDER_ITEM_NUMBER_SYSTEM),
            nhs_number=_identifier(task.get("for", {}), NHS_NUMBER_SYSTEM),
        )
        with self._lock:
            self._items[item.item_id] = item
        return item

    async def _take(self, short_form: str, tasks: list[dict[str, Any]]) -> None:
        if self.book.order(short_form) is not None:
            return  # already taken; the gateway still shows it until our acknowledgement lands
        message = await self._read_prescription(tasks)
        items = tuple(_identifier(task.get("focus", {}), ORDER_ITEM_NUMBER_SYSTEM) for task in tasks)
        result = self.book.take(
            key=f"pull/{short_form}", short_form_id=short_form, item_ids=items, message=message
        )
        if result.outcome is Intake.REFUSED and result.reason is not None and result.first:
            events = self.book.refusal_events(
                key=f"pull/{short_form}", short_form_id=short_form, item_ids=items, reason=result.reason
            )
            await self._report(events)

    async def _read_prescription(self, tasks: list[dict[str, Any]]) -> bytes:
        """The Bundle the gateway names in Task.input, else the items' MedicationRequests."""
        for task in tasks:
            for task_input in task.get("input", []):
                codes = {coding.get("code") for coding in task_input.get("type", {}).get("coding", [])}
                reference = task_input.get("valueReference", {}).get("reference")
                if PRESCRIPTION_MESSAGE_INPUT in codes and reference:
                    response = await self._request("GET", f"/fhir/{reference}")
                    response.raise_for_status()
                    return response.content
        requests = []
        for task in tasks:
            reference = task.get("focus", {}).get("reference")
            if reference:
                response = await self._request("GET", f"/fhir/{reference}")
                response.raise_for_status()
                requests.append(response.json())
        return orjson.dumps(requests)

    async def _report(self, events: list[LifecycleEvent]) -> None:
        for event in events:
            with self._lock:
                item = self._items.get(event.item_id)
            if item is None:
                continue
            status = event.status
            if status == CANCEL_REFUSED:
                booked = self.book.order(event.short_form_id)
                status = booked.item_statuses[event.item_id] if booked else "accepted"
            task = status_task(
                task_id=item.task_id,
                short_form_id=event.short_form_id,
                item_id=event.item_id,
                nhs_number=item.nhs_number,
                provider_ods=self._config.ods,
                status=status,
                last_modified=event.occurred_at,
                reason=event.reason,
                window=event.window,
                attempt=event.attempt,
            )
            await self._put_task(item, status, task)

    async def _put_task(self, item: _Item, status: str, task: dict[str, Any]) -> None:
        config = self._config
        backoff = config.status_retry_seconds
        http_status: int | None = None
        answer = ""
        attempt = 0
        for attempt in range(1, config.status_retry_attempts + 1):
            try:
                response = await self._request(
                    "PUT",
                    f"/fhir/Task/{item.task_id}",
                    content=orjson.dumps(task),
                    headers={"Content-Type": FHIR_JSON},
                )
                http_status, answer = response.status_code, _answer(response)
            except (httpx.HTTPError, TokenRefused) as exc:
                http_status, answer = None, type(exc).__name__
            if http_status is not None and http_status < 500 and http_status not in (408, 429):
                break
            if attempt < config.status_retry_attempts:
                await self._time.sleep(backoff)
                backoff *= 2
        with self._lock:
            self._updates.append(TaskUpdate(item.task_id, item.item_id, status, http_status, answer, attempt))

    async def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        assert self._http is not None and self._tokens is not None, "start() not called"
        headers = {**options.pop("headers", {}), "Authorization": f"Bearer {await self._tokens.token()}"}
        response = await self._http.request(method, path, headers=headers, **options)
        if response.status_code == 401:
            self._tokens.forget()
        return response


def _identifier(element: dict[str, Any], system: str) -> str:
    identifier = element.get("identifier", {}) if isinstance(element, dict) else {}
    return str(identifier.get("value", "")) if identifier.get("system") == system else ""


def _answer(response: httpx.Response) -> str:
    if response.is_success:
        return str(response.headers.get("X-Status-Verdict", "ok"))
    try:
        issues: Iterable[dict[str, Any]] = response.json().get("issue", [])
    except ValueError:
        return response.text[:200]
    return "; ".join(str(issue.get("diagnostics", "")) for issue in issues)[:300]


class PullSimulator:
    """The polling provider in a background thread."""

    def __init__(
        self, config: PullSimulatorConfig, *, key: RSAKey | ECKey, time_source: SimulationTime | None = None
    ) -> None:
        self.provider = PollingProvider(config, key=key, time_source=time_source)
        self._background = BackgroundLoop(f"pull-provider-{config.ods}")
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._background.start()
        self._background.run(self._start())

    async def _start(self) -> None:
        await self.provider.start()
        self._runner = asyncio.get_running_loop().create_task(self.provider.run())

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._background.run(self._stop())
        self._background.stop()

    async def _stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self.provider.stop()

    def __enter__(self) -> PullSimulator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def configure(self, **changes: Any) -> PullSimulatorConfig:
        return self.provider.configure(**changes)

    def poll_once(self) -> int:
        """One polling round now (besides the regular ones); returns the prescriptions found."""
        return self._background.run(self.provider.poll_once())

    def orders(self) -> list[BookedOrder]:
        return self.provider.book.orders()

    def task_updates(self) -> list[TaskUpdate]:
        return self.provider.task_updates()

    def events(self) -> list[LifecycleEvent]:
        return self.provider.book.events()
