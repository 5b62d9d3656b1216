"""The provider registry: which homecare providers exist and how to reach them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

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
