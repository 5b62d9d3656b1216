"""What every domain service works with: the database, the clock, the provider registry, the group
committer, the status listener and the dispatcher's doorbell. Built once by the app (or the worker, a
script, a test) and handed to each service as its first argument."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio.to_thread

from gateway.clock import Clock, system_clock
from gateway.domain.status_authority import StatusListener
from gateway.store.db import Database
from gateway.store.providers import ProviderDirectory
from gateway.store.writer import BatchWriter

T = TypeVar("T")


class Wake(Protocol):
    def __call__(self, provider_ods: str | None = None) -> None:
        """Wake the dispatcher: messages were queued (for this provider, when one is named)."""


def _nobody(provider_ods: str | None = None) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Context:
    db: Database
    clock: Clock = system_clock
    providers: ProviderDirectory | None = None
    writer: BatchWriter | None = None
    # Hears every applied status change, in its transaction (subscriptions hang off it).
    listener: StatusListener | None = None
    # Rung after a commit that queued messages, so an in-process dispatcher sends them at once.
    wake_dispatcher: Wake = field(default=_nobody)
    # How long a cancellation waits for the provider's answer before answering 202.
    cancel_wait_seconds: float = 5.0

    @classmethod
    def for_database(cls, db: Database, **options: Any) -> Context:
        """A context with its own registry reader (no cache) and group committer; `close()` it."""
        options.setdefault("providers", ProviderDirectory(db, ttl=0))
        options.setdefault("writer", BatchWriter(db))
        return cls(db, **options)

    @property
    def provider_directory(self) -> ProviderDirectory:
        if self.providers is None:
            raise RuntimeError("this context was built without the provider registry")
        return self.providers

    @property
    def batch_writer(self) -> BatchWriter:
        if self.writer is None:
            raise RuntimeError("this context was built without a batch writer")
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def in_thread(function: Callable[..., T], /, *arguments: Any, **keywords: Any) -> T:
    """Run blocking work (the database) off the event loop."""
    return await anyio.to_thread.run_sync(partial(function, *arguments, **keywords))
