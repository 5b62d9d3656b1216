"""The gateway's parts wired together, and the work that runs beside the API: the dispatcher, expiry,
the alert for orders nobody pulls, the audit sealer, the KPI fold, the run-out watch, and the adapters' status
listener and pollers. One `Runtime` serves `serve` (the app's lifespan) and `worker` alike."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from adapters.registry import AdapterRegistryError
from auth.tokens import TokenService
from gateway.clock import Clock, system_clock
from gateway.dispatch.worker import Dispatcher
from gateway.domain.context import Context, in_thread
from gateway.domain.expiry import expire_due
from gateway.domain.pull import alert_unpulled
from gateway.domain.refusals import RefusalLog
from gateway.kpi.service import fold_round
from gateway.kpi.watch import check_run_out
from gateway.logs import get_logger
from gateway.metrics import SENDS
from gateway.notify.service import notify_run_out, notify_status_change
from gateway.operator_errors import OperatorError
from gateway.security import build_token_service
from gateway.settings import Settings
from gateway.status_sources import StatusSources
from gateway.store.audit import seal_audit_log
from gateway.store.db import Database, translate_errors
from gateway.store.errors import StoreError
from gateway.store.providers import ProviderDirectory
from gateway.store.writer import BatchWriter

log = get_logger("gateway.runner")


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    context: Context
    tokens: TokenService
    dispatcher: Dispatcher
    status_sources: StatusSources
    refusals: RefusalLog

    @classmethod
    def create(
        cls, settings: Settings, *, db: Database | None = None, clock: Clock = system_clock
    ) -> Runtime:
        database = db or Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
        tokens = build_token_service(settings, database, clock)
        dispatcher = Dispatcher(
            database,
            clock=clock,
            settings=settings.dispatcher_settings(),
            signing_keys=tokens.signing_keys,
            on_status_change=notify_status_change,
        )
        context = Context(
            database,
            clock=clock,
            providers=ProviderDirectory(database, ttl=settings.provider_cache_seconds),
            writer=BatchWriter(database),
            listener=notify_status_change,
            wake_dispatcher=dispatcher.doorbell.ring,
            cancel_wait_seconds=settings.cancel_wait_seconds,
        )
        status_sources = StatusSources(
            context,
            mllp_options=settings.mllp_listener_options(),
            poll_folders=settings.poll_status_folders,
            refresh_seconds=settings.status_sources_refresh_seconds,
        )
        refusals = RefusalLog(
            database,
            clock,
            window_seconds=settings.refusal_audit_window_seconds,
            max_keys=settings.refusal_audit_max_keys,
        )
        tokens.refusal_sink = partial(refusals.record_audit, route="POST /auth/token")
        return cls(settings, context, tokens, dispatcher, status_sources, refusals)

    @asynccontextmanager
    async def running(self, *, dispatch: bool) -> AsyncIterator[asyncio.Event]:
        """The background work until the block ends (or the returned event is set)."""
        stop = asyncio.Event()
        await self._open_status_sources()
        receiving = asyncio.create_task(self.status_sources.serve(stop))
        dispatching = asyncio.create_task(self.dispatcher.run(stop)) if dispatch else None
        loops = []
        if dispatch:
            loops.append(_every(self.settings.expiry_check_seconds, "expiry", self._expire))
            loops.append(_every(self.settings.pull_check_seconds, "unpulled_check", self._alert_unpulled))
        if self.settings.audit_seal_seconds:
            loops.append(_every(self.settings.audit_seal_seconds, "audit_seal", self._housekeeping))
        if self.settings.kpi_fold_seconds:
            # The KPI figures follow the event log: folded in here, the one place they are kept up to date.
            loops.append(_every(self.settings.kpi_fold_seconds, "kpi_fold", self._fold_kpis))
        # Closed windows' counts are written a window later (at least a second: never a busy loop).
        flush_every = max(self.settings.refusal_audit_window_seconds, 1.0)
        loops.append(_every(flush_every, "refusal_audit", self._flush_refusals))
        if self.settings.run_out_check_seconds:
            # Run-out warnings: raised once per course and supply, whichever process finds them first.
            loops.append(_every(self.settings.run_out_check_seconds, "run_out_check", self.check_run_out))
        background = [asyncio.create_task(loop) for loop in loops]
        try:
            yield stop
        finally:
            stop.set()
            for task in background:
                task.cancel()
            if dispatching is not None:
                await dispatching
            await receiving
            await self._flush_refusals(everything=True)
            self.context.close()
            self.tokens.close()

    async def _open_status_sources(self) -> None:
        try:
            await self.status_sources.open()
        except OSError as exc:
            raise OperatorError(
                f"HOMECARE_MLLP_LISTEN={self.settings.mllp_listen}: cannot listen there "
                f"({exc.strerror or exc}): choose another address or port"
            ) from None
        except AdapterRegistryError as exc:
            raise OperatorError(f"Bad setting for the MLLP listener (HOMECARE_MLLP_*): {exc}") from None

    async def _alert_unpulled(self) -> None:
        """Orders nobody pulled in time: dead and undeliverable, with the alert of a failed push."""
        for order in await in_thread(alert_unpulled, self.context, now=self.context.clock()):
            SENDS.labels(provider=order.provider_ods, outcome="dead").inc()
            log.error(
                "order_undeliverable",
                channel="provider",
                prescription_id=order.prescription_id,
                provider=order.provider_ods,
                reason=f"not pulled within {order.alert_seconds} s",
            )

    async def _expire(self) -> None:
        count = await in_thread(expire_due, self.context, now=self.context.clock())
        if count:
            log.info("prescriptions_expired", items=count)

    async def _fold_kpis(self) -> None:
        await in_thread(
            fold_round,
            self.context.db,
            clock=self.context.clock,
            close_days=self.settings.kpi_month_close_days,
        )

    async def _flush_refusals(self, *, everything: bool = False) -> None:
        """Write the coalesced refusals of closed windows (all of them when the process stops)."""
        try:
            with translate_errors():
                await in_thread(self.refusals.flush, everything=everything)
        except StoreError as exc:
            log.error("refusal_audit_failed", error_type=type(exc).__name__)

    async def check_run_out(self) -> None:
        result = await in_thread(
            check_run_out,
            self.context.db,
            now=self.context.clock(),
            listener=notify_run_out,
            lead_days=self.settings.run_out_lead_days,
        )
        if result.raised:
            # Notifications were queued: the dispatcher delivers them.
            self.context.wake_dispatcher()

    async def _housekeeping(self) -> None:
        """Seal the audit log and forget expired assertion ids."""
        sealed = await in_thread(seal_audit_log, self.context.db)
        with translate_errors():
            await in_thread(self.tokens.purge_used_assertions)
        if sealed:
            log.debug("audit_sealed", rows=sealed)


async def _every(interval: float, name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Until cancelled: `work` every `interval` seconds. A failed round (the database away for a moment)
    is logged and tried again at the next."""
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except StoreError as exc:
            log.error(f"{name}_failed", error_type=type(exc).__name__)


# A young collection once this many more containers are alive than before (Python's default: 700).
YOUNG_COLLECTION_THRESHOLD = 20_000


def freeze_startup_objects() -> None:
    """Take what start-up built (modules, models, the app: most of the heap) out of the cycle
    collector's reach. Each request allocates thousands of short-lived objects, so full collections
    keep coming, and each would otherwise walk that whole heap again: measured under intake load it
    made a request's structure check cost over half as much again. Nothing is kept alive by this.

    The young generation's threshold is raised too: a message parses into about a thousand dicts
    and lists, all alive until its answer is sent, so at Python's default a collection ran every few
    requests and found nothing to free (measured: 140 a second at 600 requests a second, 3% of the
    CPU). At 20,000 a request's objects are freed by reference counting before one is due; only
    garbage with cycles waits longer, and there is little of it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 10, 10)
