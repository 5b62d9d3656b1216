"""KPI services: keep the monthly aggregate up to date from the event log, recompute it, read it.

The fold reads new events in id order and adds to each cell the difference they make to their
prescriptions' figures (what the prescription adds with them, less what it added without them);
it runs beside the API and in workers every `HOMECARE_KPI_FOLD_SECONDS` (`fold_round`, from
`gateway.runner`; one process folds at a time). A recompute builds a month (or everything) again
from the log; both give the same figures, and a test holds them to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from auth.identity import Caller, Role
from gateway.clock import Clock
from gateway.kpi.definitions import DEFINITIONS, MeasureDefinition
from gateway.kpi.measures import add_into, latest_into, prescription_figures, restatements
from gateway.kpi.months import first_day, last_day, month_bounds
from gateway.logs import get_logger
from gateway.store import kpi as store
from gateway.store.db import Database
from gateway.store.kpi import CellKey, EventHead, Figures, MonthKey

log = get_logger("gateway.kpi")

# An id missing from the log (a transaction that took it has not committed) is waited for this long
# after the event that follows it was recorded, then taken as rolled back.
GAP_GRACE = timedelta(seconds=60)
# A month's recompute reads the prescriptions with an event in the month and those with a delivery
# agreed for it in this many days before it (one agreed earlier still is put right by a full
# recompute).
AGREED_AHEAD = timedelta(days=92)
FOLD_BATCH = 2000


@dataclass(frozen=True, slots=True)
class FoldResult:
    events: int
    position: int


def fold_new_events(
    db: Database, *, now: datetime, close_days: int, batch: int = FOLD_BATCH, grace: timedelta = GAP_GRACE
) -> FoldResult:
    """Fold every event not yet in the aggregate into it, a batch at a time."""
    folded = 0
    _ensure_fold(db, now)
    while True:
        count, position, more = _fold_batch(db, now=now, close_days=close_days, batch=batch, grace=grace)
        folded += count
        if not more:
            return FoldResult(folded, position)


def _fold_batch(
    db: Database, *, now: datetime, close_days: int, batch: int, grace: timedelta
) -> tuple[int, int, bool]:
    """Fold the next batch: how many events, the new position, and whether more may be waiting.

    The work is done in a read transaction and only its result written under the fold's lock, so a
    fold holds no write lock while it reads (on SQLite, writers wait for the lock). When another
    process folded meanwhile, or is folding, the result is dropped: that process has it in hand."""
    with db.snapshot() as tx:
        position = store.fold_position(tx)
        heads = store.events_after(tx, position, limit=batch)
        horizon = _horizon(position, heads, now=now, grace=grace)
        if horizon == position:
            return 0, position, False
        affected = {head.prescription_id for head in heads if head.id <= horizon}
        deltas: dict[CellKey, Figures] = {}
        restated: dict[MonthKey, datetime] = {}
        for history in store.histories(tx, affected, up_to=horizon):
            add_into(deltas, prescription_figures(history))
            add_into(deltas, prescription_figures([e for e in history if e.id <= position]), -1)
            latest_into(
                restated, restatements([e for e in history if e.id > position], close_days=close_days)
            )
    with db.transaction() as tx:
        if store.claim_fold(tx) != position:
            return 0, position, False
        store.add_to_cells(tx, with_national(deltas), now=now)
        store.note_restatements(tx, with_national_months(restated))
        store.advance_fold(tx, horizon, now=now)
    count = sum(1 for head in heads if head.id <= horizon)
    return count, horizon, len(heads) == batch and horizon == heads[-1].id


def _ensure_fold(db: Database, now: datetime) -> None:
    with db.transaction() as tx:
        store.ensure_fold(tx, now=now)


def _horizon(position: int, heads: Sequence[EventHead], *, now: datetime, grace: timedelta) -> int:
    """How far the fold may go: up to the first missing id still young enough to be committed later."""
    horizon = position
    for index, head in enumerate(heads):
        # The first fold takes the log from its first event (the ids before it are nobody's).
        first_ever = position == 0 and index == 0
        if not first_ever and head.id != horizon + 1 and head.recorded_at > now - grace:
            break
        horizon = head.id
    return horizon


def recompute_month(db: Database, month: str, *, now: datetime, close_days: int) -> int:
    """Build one month's figures again from the log (as far as the fold has read it); returns how
    many prescriptions were read."""
    start, end = month_bounds(month)
    _ensure_fold(db, now)
    with db.transaction() as tx:
        position = store.claim_fold(tx, wait=True)
        assert position is not None  # waited for it
        chosen = store.prescriptions_with_events(tx, start, end) | store.prescriptions_with_agreed_dates(
            tx,
            start - AGREED_AHEAD,
            start,
            # As written, a dateTime's date may be a day off its UK date: read a day either side.
            agreed_from=(first_day(month) - timedelta(days=1)).isoformat(),
            agreed_before=(last_day(month) + timedelta(days=2)).isoformat(),
        )
        cells: dict[CellKey, Figures] = {}
        restated: dict[MonthKey, datetime] = {}
        for history in store.histories(tx, chosen, up_to=position):
            add_into(cells, {k: f for k, f in prescription_figures(history).items() if k.month == month})
            latest_into(
                restated,
                {k: at for k, at in restatements(history, close_days=close_days).items() if k.month == month},
            )
        store.replace_months(tx, [month], with_national(cells), with_national_months(restated), now=now)
    log.info("kpi_month_recomputed", month=month, prescriptions=len(chosen))
    return len(chosen)


def recompute_all(db: Database, *, now: datetime, close_days: int, grace: timedelta = GAP_GRACE) -> int:
    """Build every month again from the whole log; returns how many prescriptions were read."""
    _ensure_fold(db, now)
    with db.transaction() as tx:
        position = store.claim_fold(tx, wait=True)
        assert position is not None
        horizon = max(position, store.last_event_recorded_before(tx, now - grace))
        chosen = store.prescriptions_up_to(tx, horizon)
        cells: dict[CellKey, Figures] = {}
        restated: dict[MonthKey, datetime] = {}
        for history in store.histories(tx, chosen, up_to=horizon):
            add_into(cells, prescription_figures(history))
            latest_into(restated, restatements(history, close_days=close_days))
        store.replace_months(tx, None, with_national(cells), with_national_months(restated), now=now)
        store.advance_fold(tx, horizon, now=now)
    log.info("kpi_recomputed", prescriptions=len(chosen), position=horizon)
    return len(chosen)


def with_national(cells: dict[CellKey, Figures]) -> dict[CellKey, Figures]:
    """The cells and, beside them, their sums over every trust (tenant `*`): the national figures
    are then read as they are, not summed from every trust's on each request."""
    national: dict[CellKey, Figures] = {}
    for key, figures in cells.items():
        add_into(national, {CellKey(key.measure, key.provider_ods, store.ALL_TRUSTS, key.month): figures})
    return cells | national


def with_national_months(restated: dict[MonthKey, datetime]) -> dict[MonthKey, datetime]:
    national: dict[MonthKey, datetime] = {}
    for key, moment in restated.items():
        latest_into(national, {MonthKey(key.provider_ods, store.ALL_TRUSTS, key.month): moment})
    return restated | national


def fold_round(db: Database, *, clock: Clock, close_days: int) -> FoldResult:
    """One round of the fold, as the runner does it every few seconds (gateway.runner)."""
    result = fold_new_events(db, now=clock(), close_days=close_days)
    if result.events:
        log.debug("kpi_folded", events=result.events, position=result.position)
    return result


@dataclass(frozen=True, slots=True)
class View:
    """Whose figures a caller sees. The public sees every trust's prescriptions together, with small
    numbers hidden; a trust sees its own prescriptions (per provider), a provider those routed to it,
    in full (they see those prescriptions one by one anyway)."""

    tenant_ods: str | None = None
    provider_ods: str | None = None
    suppress: bool = True

    @property
    def scope(self) -> str:
        return f"trust {self.tenant_ods}" if self.tenant_ods else "all trusts"


PUBLIC = View()


def view_for(caller: Caller | None) -> View:
    if caller is None:
        return PUBLIC
    if caller.role is Role.PROVIDER:
        return View(provider_ods=caller.ods_code, suppress=False)
    return View(tenant_ods=caller.ods_code, suppress=False)


@dataclass(frozen=True, slots=True)
class MeasureFigures:
    """One measure's figures for one provider (None: every provider) over whole months."""

    definition: MeasureDefinition
    provider_ods: str | None
    months: tuple[str, ...]
    figures: Figures
    restated_at: datetime | None
    view: View


def read_figures(
    db: Database,
    *,
    view: View,
    months: Sequence[str],
    definitions: Iterable[MeasureDefinition] = DEFINITIONS,
    provider_ods: str | None = None,
    per_provider: bool = True,
) -> list[MeasureFigures]:
    """The figures a view holds over `months`: per provider (every provider with figures, or the one
    asked for), or, without `per_provider`, all providers together. A measure without figures is
    given as zero."""
    wanted = list(definitions)
    if view.provider_ods is not None and provider_ods not in (None, view.provider_ods):
        return []
    provider = view.provider_ods or provider_ods
    with db.snapshot() as tx:
        tenant = view.tenant_ods or store.ALL_TRUSTS
        cells = store.read_cells(
            tx,
            months=months,
            provider_ods=provider,
            tenant_ods=tenant,
            measures=[d.id.value for d in wanted],
        )
        restated = store.read_restatements(tx, months=months, provider_ods=provider, tenant_ods=tenant)
    subjects: Sequence[str | None] = (
        [provider]
        if not per_provider or provider is not None
        else sorted({c.key.provider_ods for c in cells})
    )
    return _assemble(cells, restated, view=view, months=months, definitions=wanted, subjects=subjects)


def read_figures_by_trust(db: Database, *, months: Sequence[str]) -> list[MeasureFigures]:
    """Every trust's own figures, per provider (for operators: nothing hidden)."""
    with db.snapshot() as tx:
        cells = [c for c in store.read_cells(tx, months=months) if c.key.tenant_ods != store.ALL_TRUSTS]
        restated = store.read_restatements(tx, months=months)
    results: list[MeasureFigures] = []
    for trust in sorted({cell.key.tenant_ods for cell in cells}):
        own = [cell for cell in cells if cell.key.tenant_ods == trust]
        results.extend(
            _assemble(
                own,
                [r for r in restated if r.key.tenant_ods == trust],
                view=View(tenant_ods=trust, suppress=False),
                months=months,
                definitions=DEFINITIONS,
                subjects=sorted({cell.key.provider_ods for cell in own}),
            )
        )
    return results


def _assemble(
    cells: Sequence[store.StoredCell],
    restated: Sequence[store.Restatement],
    *,
    view: View,
    months: Sequence[str],
    definitions: Sequence[MeasureDefinition],
    subjects: Sequence[str | None],
) -> list[MeasureFigures]:
    """Sum the cells of each measure for each subject (a provider, or None for all of them)."""
    results = []
    for subject in subjects:
        mine = [cell for cell in cells if subject in (None, cell.key.provider_ods)]
        latest = max((r.restated_at for r in restated if subject in (None, r.key.provider_ods)), default=None)
        for definition in definitions:
            total = Figures()
            for cell in mine:
                if cell.key.measure == definition.id:
                    total.add(cell.figures)
            results.append(MeasureFigures(definition, subject, tuple(months), total, latest, view))
    return results
