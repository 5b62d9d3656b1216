"""Status coming in through the adapters: the MLLP listener (when configured) and a poller for each
status folder of the enabled providers whose adapter reads one (`csv-drop`), all handing what they
take to the gateway's report sink. Run by `gateway.runner.Runtime` in `serve` and `worker` alike.

The registry is read again every `refresh_seconds`: a provider added, changed or disabled gets its
poller started, restarted or stopped. A folder named by several providers is read by one poller (the
first provider's); a folder whose provider's settings cannot make a poller is left alone and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapters.inbound import StatusSource
from adapters.registry import AdapterRegistryError, create_status_listener, create_status_poller
from gateway.domain.context import Context, in_thread
from gateway.domain.provider_reports_inbound import report_sink
from gateway.logs import get_logger
from gateway.store.errors import StoreError
from gateway.store.providers import ProviderEntry

log = get_logger("gateway.status_sources")

MLLP_SCHEME = "hl7v2-mllp"


@dataclass(slots=True)
class _Running:
    fingerprint: str
    stop: asyncio.Event
    task: asyncio.Task[None]


class StatusSources:
    def __init__(
        self,
        ctx: Context,
        *,
        mllp_options: Mapping[str, Any] | None,
        poll_folders: bool,
        refresh_seconds: float,
    ) -> None:
        self._ctx = ctx
        self._mllp_options = mllp_options
        self._poll_folders = poll_folders
        self._refresh_seconds = refresh_seconds
        self._sink = report_sink(ctx)
        self._listener: StatusSource | None = None
        self._pollers: dict[str, _Running] = {}
        self.mllp_address: tuple[str, int] | None = None
        """Where the MLLP listener listens, once open (the port the OS chose for port 0)."""

    async def open(self) -> None:
        """Open the MLLP listener (an address in use, or bad TLS files, stop the start here)."""
        if self._mllp_options is None:
            return
        self._listener = create_status_listener(
            MLLP_SCHEME, self._mllp_options, sink=self._sink, provider_settings=self._mllp_provider
        )
        where = await self._listener.open()
        self.mllp_address = getattr(self._listener, "address", None)
        log.info("status_listener_open", listener=where)

    def _mllp_provider(self, ods: str) -> Mapping[str, Any] | None:
        entry = self._ctx.provider_directory.get(ods)
        if entry is None or not entry.enabled or entry.adapter != MLLP_SCHEME:
            return None
        return entry.settings

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve the listener and keep the pollers in step with the registry until `stop` is set."""
        listening = asyncio.create_task(self._listener.serve(stop)) if self._listener is not None else None
        try:
            while not stop.is_set():
                if self._poll_folders:
                    await self._refresh_pollers()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._refresh_seconds)
        finally:
            await self._stop_pollers(list(self._pollers))
            if listening is not None:
                await listening

    async def _refresh_pollers(self) -> None:
        try:
            entries = await in_thread(self._ctx.provider_directory.entries)
        except StoreError as exc:
            log.error("status_pollers_refresh_failed", error_type=type(exc).__name__)
            return
        wanted: dict[str, tuple[str, ProviderEntry]] = {}
        for entry in sorted(entries, key=lambda entry: entry.ods_code):
            if entry.enabled:
                self._plan_poller(entry, wanted)
        self._forget_ended_pollers()
        gone = [
            key for key, running in self._pollers.items() if wanted.get(key, ("",))[0] != running.fingerprint
        ]
        await self._stop_pollers(gone)
        for key, (fingerprint, entry) in wanted.items():
            if key not in self._pollers:
                await self._start_poller(key, fingerprint, entry)

    def _plan_poller(self, entry: ProviderEntry, wanted: dict[str, tuple[str, ProviderEntry]]) -> None:
        try:
            poller = create_status_poller(
                entry.adapter, entry.settings, provider_ods=entry.ods_code, sink=self._sink
            )
        except AdapterRegistryError as exc:
            log.warning("status_poller_unusable", provider=entry.ods_code, problem=str(exc)[:200])
            return
        if poller is None:
            return
        if poller.key in wanted:
            log.warning(
                "status_folder_shared", provider=entry.ods_code, polled_for=wanted[poller.key][1].ods_code
            )
            return
        wanted[poller.key] = (_fingerprint(entry), entry)

    async def _start_poller(self, key: str, fingerprint: str, entry: ProviderEntry) -> None:
        poller = create_status_poller(
            entry.adapter, entry.settings, provider_ods=entry.ods_code, sink=self._sink
        )
        assert poller is not None, "planned from the same settings"
        stop = asyncio.Event()
        where = await poller.source.open()
        task = asyncio.create_task(poller.source.serve(stop), name=f"status-poller-{entry.ods_code}")
        self._pollers[key] = _Running(fingerprint, stop, task)
        log.info("status_poller_started", provider=entry.ods_code, poller=where)

    async def _stop_pollers(self, keys: list[str]) -> None:
        stopping = [(key, self._pollers.pop(key)) for key in keys if key in self._pollers]
        for _, running in stopping:
            running.stop.set()
        outcomes = await asyncio.gather(*(running.task for _, running in stopping), return_exceptions=True)
        for (key, _), outcome in zip(stopping, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("status_poller_failed", poller=key, error_type=type(outcome).__name__)

    def _forget_ended_pollers(self) -> None:
        """A poller that ended by itself (a fault) is started again at this refresh."""
        for key, running in list(self._pollers.items()):
            if running.task.done():
                del self._pollers[key]
                fault = running.task.exception() if not running.task.cancelled() else None
                log.error(
                    "status_poller_ended", poller=key, error_type=type(fault).__name__ if fault else None
                )

    def polled_folders(self) -> list[str]:
        """What the pollers read now (for tests and the demo)."""
        return sorted(self._pollers)


def _fingerprint(entry: ProviderEntry) -> str:
    return repr((entry.ods_code, entry.adapter, sorted(entry.settings.items())))
