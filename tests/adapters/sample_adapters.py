"""Adapters as a separately shipped package would define them: one good, some broken."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from adapters.base import AdapterSettings, Health, Order, SendResult


class EchoSettings(AdapterSettings):
    greeting: str = "hello"


class EchoAdapter:
    scheme: ClassVar[str] = "echo-test"
    config_model: ClassVar[type[BaseModel]] = EchoSettings

    def __init__(self, config: EchoSettings) -> None:
        self.config = config
        self.closed = False

    async def send(self, order: Order, *, idempotency_key: str) -> SendResult:
        return SendResult.delivered(detail=f"{self.config.greeting} {idempotency_key}")

    async def check(self) -> Health:
        return Health(ok=True, detail="always")

    async def aclose(self) -> None:
        self.closed = True


class MisnamedAdapter(EchoAdapter):
    scheme: ClassVar[str] = "something-else"


class LaxSettings(BaseModel):
    greeting: str = "hello"


class LaxAdapter(EchoAdapter):
    scheme: ClassVar[str] = "lax-test"
    config_model: ClassVar[type[BaseModel]] = LaxSettings


class SyncAdapter(EchoAdapter):
    scheme: ClassVar[str] = "sync-test"

    def check(self) -> Health:  # type: ignore[override]
        return Health(ok=True, detail="not async")


SAMPLE_CONSTANT = "not an adapter"
