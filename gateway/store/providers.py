"""The provider registry: which homecare providers exist and how to reach them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from gateway.store.db import Database, translate_errors
from gateway.store.models import Provider


class ProviderExists(Exception):  # noqa: N818
    pass


class ProviderNotFound(Exception):  # noqa: N818
    pass


def add_provider(
    session: Session,
    *,
    ods_code: str,
    name: str,
    adapter: str,
    settings: dict[str, Any],
    now: datetime,
) -> Provider:
    if session.get(Provider, ods_code) is not None:
        raise ProviderExists(ods_code)
    provider = Provider(
        ods_code=ods_code,
        name=name,
        adapter=adapter,
        settings=settings,
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    session.add(provider)
    return provider


def update_provider(
    session: Session,
    ods_code: str,
    *,
    now: datetime,
    name: str | None = None,
    adapter: str | None = None,
    settings: dict[str, Any] | None = None,
    enabled: bool | None = None,
) -> Provider:
    provider = session.get(Provider, ods_code)
    if provider is None:
        raise ProviderNotFound(ods_code)
    if name is not None:
        provider.name = name
    if adapter is not None:
        provider.adapter = adapter
    if settings is not None:
        provider.settings = {**provider.settings, **settings}
    if enabled is not None:
        provider.enabled = enabled
    provider.updated_at = now
    session.add(provider)
    return provider


def list_providers(session: Session) -> list[Provider]:
    return list(session.execute(select(Provider).order_by(col(Provider.ods_code))).scalars())


@dataclass(frozen=True, slots=True)
class RegisteredProvider:
    """A provider as the dispatcher reaches it: its adapter's scheme and settings."""

    ods_code: str
    adapter: str
    settings: dict[str, Any]
    enabled: bool


def registered_providers(db: Database) -> dict[str, RegisteredProvider]:
    with db.read() as session:
        return {
            provider.ods_code: RegisteredProvider(
                provider.ods_code, provider.adapter, dict(provider.settings), provider.enabled
            )
            for provider in list_providers(session)
        }


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    ods_code: str
    enabled: bool
    adapter: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """The adapter's settings as registered (may hold secrets: never log them)."""


_MISS_RECHECK_SECONDS = 1.0


class ProviderDirectory:
    """Which providers exist and take orders, read from the registry at most every `ttl` seconds.

    Intake asks for every prescription; the registry changes rarely (a CLI command), so a change
    takes effect within about `ttl` seconds in every process. A stale copy is refreshed in the
    background, so no request waits for the database; `ttl=0` reads the registry every time. A
    provider missing from the copy is looked up again at once (a new provider's first order).
    """

    def __init__(self, db: Database, *, ttl: float = 2.0) -> None:
        self._db = db
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, ProviderEntry] = {}
        self._loaded_at = float("-inf")
        self._refreshing = threading.Event()

    def get(self, ods_code: str) -> ProviderEntry | None:
        age = time.monotonic() - self._loaded_at
        if self._ttl == 0 or age == float("inf"):
            self.refresh()
        elif age > self._ttl and not self._refreshing.is_set():
            self._refreshing.set()
            threading.Thread(target=self.refresh, name="provider-directory", daemon=True).start()
        entry = self._entries.get(ods_code)
        if entry is None and time.monotonic() - self._loaded_at > _MISS_RECHECK_SECONDS:
            # Registered a moment ago? Look once more before intake refuses the order (an operator
            # who just ran `providers add` must not see its first order refused). At most once a second.
            self.refresh()
            entry = self._entries.get(ods_code)
        return entry

    def entries(self) -> list[ProviderEntry]:
        """Every registered provider, as fresh as `get` gives them."""
        if self._ttl == 0 or time.monotonic() - self._loaded_at > self._ttl:
            self.refresh()
        return list(self._entries.values())

    def refresh(self) -> None:
        try:
            with self._lock:
                with translate_errors(), self._db.read() as session:
                    rows = session.execute(
                        select(
                            col(Provider.ods_code),
                            col(Provider.enabled),
                            col(Provider.adapter),
                            col(Provider.settings),
                        )
                    ).all()
                self._entries = {
                    row.ods_code: ProviderEntry(
                        row.ods_code, bool(row.enabled), str(row.adapter), dict(row.settings or {})
                    )
                    for row in rows
                }
                self._loaded_at = time.monotonic()
        finally:
            self._refreshing.clear()
