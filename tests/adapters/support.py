"""Helpers for the adapter tests: orders from built messages, adapters that close, polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson

from adapters.base import Adapter, Order, OrderKind
from adapters.registry import create_adapter
from fhir_profiles.builder import Message

T = TypeVar("T")


def short_form_of(message: Message) -> str:
    return str(
        next(
            entry["resource"]["groupIdentifier"]["value"]
            for entry in message["entry"]
            if entry["resource"]["resourceType"] == "MedicationRequest"
        )
    )


def item_ids_of(message: Message) -> list[str]:
    return [
        entry["resource"]["identifier"][0]["value"]
        for entry in message["entry"]
        if entry["resource"]["resourceType"] == "MedicationRequest"
    ]


def order_for(
    message: Message, *, body: bytes | None = None, kind: OrderKind = "new", provider_ods: str = "VNCEL"
) -> Order:
    """An order as the dispatcher would make it; `body` overrides the serialised message."""
    return Order(
        kind=kind,
        prescription_id=str(uuid.uuid4()),
        short_form_id=short_form_of(message),
        tenant_ods="RBA",
        provider_ods=provider_ods,
        message=body if body is not None else orjson.dumps(message),
        request_id=str(uuid.uuid4()),
        correlation_id=f"corr-{uuid.uuid4()}",
    )


def cancel_message(message: Message, *, items: list[str] | None = None) -> Message:
    """A prescription-order-update (cancel) for `message`, for all its items or the ones named."""
    cancel = orjson.loads(orjson.dumps(message))
    cancel["identifier"]["value"] = str(uuid.uuid4())
    cancel["entry"][0]["resource"]["eventCoding"]["code"] = "prescription-order-update"
    kept = []
    for entry in cancel["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            if items is not None and resource["identifier"][0]["value"] not in items:
                continue
            resource["status"] = "cancelled"
            resource["statusReason"] = {
                "coding": [
                    {
                        "system": "https://fhir.nhs.uk/CodeSystem/medicationrequest-status-reason",
                        "code": "0002",
                        "display": "Clinical contra-indication",
                    }
                ]
            }
        kept.append(entry)
    cancel["entry"] = kept
    return cancel


@asynccontextmanager
async def adapter_for(scheme: str = "fhir-rest", **settings: Any) -> AsyncIterator[Adapter]:
    adapter = create_adapter(scheme, settings)
    try:
        yield adapter
    finally:
        await adapter.aclose()


def wait_for(condition: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until `condition()` is truthy and return it (a generous deadline, never a timed assert)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


async def eventually(
    condition: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition"
) -> T:
    """`wait_for` for async tests: polls without blocking the event loop (a listener may be serving on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)
