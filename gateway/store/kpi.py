"""The KPI aggregate in the database, and the event log as the KPIs read it.

`gateway.kpi` computes; this module reads events (in id order, with their prescription's provider
and trust), keeps the monthly sums (`kpi_monthly`), the restated months (`kpi_restatement`) and
how far the log has been folded in (`kpi_fold`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    DateTime,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from gateway.store.db import Tx
from gateway.store.errors import StoreError
from gateway.store.models import KpiFold, KpiMonthly, KpiRestatement, Prescription, StatusEvent

_event = StatusEvent.__table__  # type: ignore[attr-defined]
_prescription = Prescription.__table__  # type: ignore[attr-defined]
_monthly = KpiMonthly.__table__  # type: ignore[attr-defined]
_restatement = KpiRestatement.__table__  # type: ignore[attr-defined]
_fold = KpiFold.__table__  # type: ignore[attr-defined]

T = TypeVar("T")
FOLD = "monthly"
# The tenant of the cells that sum every trust's (the national figures, read without summing trusts).
ALL_TRUSTS = "*"
# Prescriptions per query when reading histories (well under every driver's parameter limit).
_CHUNK = 500


class KpiStoreError(StoreError):
    """The KPI tables could not be read or written (the database said why: see __cause__)."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One status event as the KPIs see it: the row, and its prescription's provider and trust."""

    id: int
    prescription_id: str
    item_id: str | None
    tenant_ods: str
    provider_ods: str
    status: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    verdict: str | None
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EventHead:
    """What the fold needs to decide how far to read: an event's id, prescription and recording time."""

    id: int
    prescription_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True, order=True)
class CellKey:
    """One measure, for one provider, one trust (tenant) and one calendar month (YYYY-MM)."""

    measure: str
    provider_ods: str
    tenant_ods: str
    month: str


@dataclass(frozen=True, slots=True, order=True)
class MonthKey:
    """One provider and trust in one month (restatements are kept at this level)."""

    provider_ods: str
    tenant_ods: str
    month: str


@dataclass(slots=True)
class Figures:
    """Additive sums of one cell: counts, counts by breakdown and category, minutes observed.

    Empty entries are dropped, so equal figures compare equal however they were summed.
    """

    numerator: int = 0
    denominator: int = 0
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    distribution: dict[int, int] = field(default_factory=dict)

    def add(self, other: Figures, sign: int = 1) -> None:
        self.numerator += sign * other.numerator
        self.denominator += sign * other.denominator
        for breakdown, categories in other.strata.items():
            mine = self.strata.setdefault(breakdown, {})
            for category, count in categories.items():
                total = mine.get(category, 0) + sign * count
                if total:
                    mine[category] = total
                else:
                    mine.pop(category, None)
            if not mine:
                del self.strata[breakdown]
        for minutes, count in other.distribution.items():
            total = self.distribution.get(minutes, 0) + sign * count
            if total:
                self.distribution[minutes] = total
            else:
                self.distribution.pop(minutes, None)

    def is_empty(self) -> bool:
        return not (self.numerator or self.denominator or self.strata or self.distribution)

    def copy(self) -> Figures:
        result = Figures()
        result.add(self)
        return result


@dataclass(frozen=True, slots=True)
class StoredCell:
    key: CellKey
    figures: Figures
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Restatement:
    key: MonthKey
    restated_at: datetime


def _guarded(work: Iterator[T]) -> Iterator[T]:
    """Database errors leave the store as KpiStoreError."""
    try:
        yield from work
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI tables could not be used: {type(exc).__name__}") from exc


def ensure_fold(tx: Tx, *, now: datetime) -> None:
    """Create the fold's place in the log (at 0) when it is missing. Run it in a transaction of its
    own: inserting the row inside a fold's transaction could deadlock with another process doing the same."""
    try:
        if tx.connection.execute(select(_fold.c.name).where(_fold.c.name == FOLD)).first() is not None:
            return
        statement = postgresql_insert if tx.connection.dialect.name == "postgresql" else sqlite_insert
        tx.connection.execute(
            statement(_fold)
            .values(name=FOLD, last_event_id=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI fold could not be created: {type(exc).__name__}") from exc


def claim_fold(tx: Tx, *, wait: bool = False) -> int | None:
    """Lock the fold's place in the log (see `ensure_fold`) and return it: the last event id folded
    in. Without `wait`, None when another process holds it (it is folding now). The lock lasts until
    the transaction ends."""
    try:
        row = tx.connection.execute(
            select(_fold.c.last_event_id).where(_fold.c.name == FOLD).with_for_update(skip_locked=not wait)
        ).first()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI fold could not be claimed: {type(exc).__name__}") from exc
    return None if row is None else int(row[0])


def advance_fold(tx: Tx, last_event_id: int, *, now: datetime) -> None:
    try:
        tx.connection.execute(
            update(_fold).where(_fold.c.name == FOLD).values(last_event_id=last_event_id, updated_at=now)
        )
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI fold could not be advanced: {type(exc).__name__}") from exc


def fold_position(tx: Tx) -> int:
    """The last event id folded in (0 before the first fold), without locking."""
    try:
        value = tx.connection.execute(select(_fold.c.last_event_id).where(_fold.c.name == FOLD)).scalar()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI fold could not be read: {type(exc).__name__}") from exc
    return int(value or 0)


def events_after(tx: Tx, after_id: int, *, limit: int) -> list[EventHead]:
    """The next `limit` events after `after_id`, in id order."""
    try:
        rows = tx.connection.execute(
            select(_event.c.id, _event.c.prescription_id, _event.c.recorded_at)
            .where(_event.c.id > after_id)
            .order_by(_event.c.id)
            .limit(limit)
        ).all()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the event log could not be read: {type(exc).__name__}") from exc
    return [EventHead(int(row.id), row.prescription_id, row.recorded_at) for row in rows]


def last_event_recorded_before(tx: Tx, moment: datetime) -> int:
    """The highest event id among events recorded before `moment` (0 when none)."""
    try:
        value = tx.connection.execute(
            select(func.max(_event.c.id)).where(_event.c.recorded_at < moment)
        ).scalar()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the event log could not be read: {type(exc).__name__}") from exc
    return int(value or 0)


def histories(tx: Tx, prescription_ids: Collection[str], *, up_to: int) -> Iterator[list[EventRecord]]:
    """Each prescription's events with id up to `up_to`, in id order, one list per prescription."""
    ordered = sorted(set(prescription_ids))
    # A recompute reads millions of rows: PostgreSQL's times come back aware (no conversion needed),
    # and the detail is parsed by orjson rather than row by row through the JSON type.
    instant: Any = DateTime(timezone=True)
    aware = tx.connection.dialect.name == "postgresql"
    columns = (
        _event.c.id,
        _event.c.prescription_id,
        _event.c.item_id,
        _prescription.c.tenant_ods,
        _prescription.c.provider_ods,
        _event.c.status,
        type_coerce(_event.c.occurred_at, instant) if aware else _event.c.occurred_at,
        type_coerce(_event.c.recorded_at, instant) if aware else _event.c.recorded_at,
        _event.c.source,
        _event.c.verdict,
        cast(_event.c.detail, Text),
    )

    def read() -> Iterator[list[EventRecord]]:
        for start in range(0, len(ordered), _CHUNK):
            rows = tx.connection.execute(
                select(*columns)
                .join(_prescription, _prescription.c.id == _event.c.prescription_id)
                .where(_event.c.prescription_id.in_(ordered[start : start + _CHUNK]), _event.c.id <= up_to)
                .order_by(_event.c.prescription_id, _event.c.id)
            ).all()
            history: list[EventRecord] = []
            for (
                event_id,
                prescription,
                item,
                tenant,
                provider,
                status,
                occurred,
                recorded,
                source,
                verdict,
                text,
            ) in rows:
                detail = orjson.loads(text) if text else None
                record = EventRecord(
                    int(event_id),
                    prescription,
                    item,
                    tenant,
                    provider,
                    status,
                    occurred,
                    recorded,
                    source,
                    verdict,
                    detail if isinstance(detail, dict) else _NO_DETAIL,
                )
                if history and history[0].prescription_id != prescription:
                    yield history
                    history = []
                history.append(record)
            if history:
                yield history

    return _guarded(read())


_NO_DETAIL: Mapping[str, Any] = MappingProxyType({})


def prescriptions_with_agreed_dates(
    tx: Tx, start: datetime, end: datetime, *, agreed_from: str, agreed_before: str
) -> set[str]:
    """The prescriptions with a delivery agreed in [start, end) for a date that, as written, is in
    [agreed_from, agreed_before) (ISO dates: a dateTime compares as its date written out)."""
    window = _event.c.detail["delivery_window"]
    conditions = [
        _event.c.status == "delivery-scheduled",
        _event.c.occurred_at >= start,
        _event.c.occurred_at < end,
        or_(
            and_(window["end"].as_string() >= agreed_from, window["end"].as_string() < agreed_before),
            and_(window["start"].as_string() >= agreed_from, window["start"].as_string() < agreed_before),
        ),
    ]
    try:
        rows = tx.connection.execute(select(_event.c.prescription_id).where(*conditions).distinct()).all()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the event log could not be read: {type(exc).__name__}") from exc
    return {row[0] for row in rows}


def prescriptions_up_to(tx: Tx, up_to: int) -> set[str]:
    """Every prescription with an event whose id is at most `up_to`."""
    try:
        rows = tx.connection.execute(
            select(_event.c.prescription_id).where(_event.c.id <= up_to).distinct()
        ).all()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the event log could not be read: {type(exc).__name__}") from exc
    return {row[0] for row in rows}


def prescriptions_with_events(
    tx: Tx, start: datetime, end: datetime, *, status: str | None = None
) -> set[str]:
    """The prescriptions with an event (of `status`, if given) that happened in [start, end)."""
    conditions = [_event.c.occurred_at >= start, _event.c.occurred_at < end]
    if status is not None:
        conditions.append(_event.c.status == status)
    try:
        rows = tx.connection.execute(select(_event.c.prescription_id).where(*conditions).distinct()).all()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the event log could not be read: {type(exc).__name__}") from exc
    return {row[0] for row in rows}


def _cell_values(key: CellKey, figures: Figures, now: datetime) -> dict[str, Any]:
    return {
        "month": key.month,
        "provider_ods": key.provider_ods,
        "tenant_ods": key.tenant_ods,
        "measure": key.measure,
        "numerator": figures.numerator,
        "denominator": figures.denominator,
        "strata": figures.strata,
        # JSON object keys are strings.
        "distribution": {str(minutes): count for minutes, count in sorted(figures.distribution.items())},
        "updated_at": now,
    }


def _figures_from(row: Any) -> Figures:
    return Figures(
        numerator=int(row.numerator),
        denominator=int(row.denominator),
        strata={b: {c: int(n) for c, n in cats.items()} for b, cats in (row.strata or {}).items()},
        distribution={int(minutes): int(count) for minutes, count in (row.distribution or {}).items()},
    )


def _key_of(row: Any) -> CellKey:
    return CellKey(row.measure, row.provider_ods, row.tenant_ods, row.month)


_CELL_KEY = tuple_(_monthly.c.month, _monthly.c.provider_ods, _monthly.c.tenant_ods, _monthly.c.measure)
_CELL_WHERE = and_(
    _monthly.c.month == bindparam("k_month"),
    _monthly.c.provider_ods == bindparam("k_provider"),
    _monthly.c.tenant_ods == bindparam("k_tenant"),
    _monthly.c.measure == bindparam("k_measure"),
)


def _bind_key(key: CellKey) -> dict[str, str]:
    return {
        "k_month": key.month,
        "k_provider": key.provider_ods,
        "k_tenant": key.tenant_ods,
        "k_measure": key.measure,
    }


def add_to_cells(tx: Tx, deltas: Mapping[CellKey, Figures], *, now: datetime) -> None:
    """Add `deltas` (which may subtract) to the stored cells; a cell that comes to nothing is removed."""
    keys = sorted(deltas)
    try:
        existing: dict[CellKey, Figures] = {}
        for start in range(0, len(keys), _CHUNK):
            wanted = [
                (k.month, k.provider_ods, k.tenant_ods, k.measure) for k in keys[start : start + _CHUNK]
            ]
            for row in tx.connection.execute(select(_monthly).where(_CELL_KEY.in_(wanted))):
                existing[_key_of(row)] = _figures_from(row)
        inserts, updates, deletes = [], [], []
        for key in keys:
            figures = existing.get(key, Figures())
            figures.add(deltas[key])
            if key in existing and figures.is_empty():
                deletes.append(_bind_key(key))
            elif key in existing:
                values = _cell_values(key, figures, now)
                updates.append(_bind_key(key) | {f"v_{name}": values[name] for name in _UPDATED})
            elif not figures.is_empty():
                inserts.append(_cell_values(key, figures, now))
        if inserts:
            tx.connection.execute(insert(_monthly), inserts)
        if updates:
            tx.connection.execute(
                update(_monthly)
                .where(_CELL_WHERE)
                .values({name: bindparam(f"v_{name}") for name in _UPDATED}),
                updates,
            )
        if deletes:
            tx.connection.execute(delete(_monthly).where(_CELL_WHERE), deletes)
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI figures could not be written: {type(exc).__name__}") from exc


_UPDATED = ("numerator", "denominator", "strata", "distribution", "updated_at")


def replace_months(
    tx: Tx,
    months: Collection[str] | None,
    cells: Mapping[CellKey, Figures],
    restatements: Mapping[MonthKey, datetime],
    *,
    now: datetime,
) -> None:
    """Put `cells` and `restatements` in place of everything held for `months` (None: every month)."""
    try:
        for table in (_monthly, _restatement):
            statement = delete(table)
            if months is not None:
                statement = statement.where(table.c.month.in_(sorted(months)))
            tx.connection.execute(statement)
        rows = [
            _cell_values(key, figures, now)
            for key, figures in sorted(cells.items())
            if not figures.is_empty()
        ]
        if rows:
            tx.connection.execute(insert(_monthly), rows)
        if restatements:
            tx.connection.execute(
                insert(_restatement),
                [
                    {
                        "month": k.month,
                        "provider_ods": k.provider_ods,
                        "tenant_ods": k.tenant_ods,
                        "restated_at": at,
                    }
                    for k, at in sorted(restatements.items())
                ],
            )
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI figures could not be replaced: {type(exc).__name__}") from exc


def note_restatements(tx: Tx, restatements: Mapping[MonthKey, datetime]) -> None:
    """Keep the latest restatement time of each month (a restatement is never forgotten)."""
    if not restatements:
        return
    keys = sorted(restatements)
    key_columns = tuple_(_restatement.c.provider_ods, _restatement.c.tenant_ods, _restatement.c.month)
    try:
        existing = {
            MonthKey(row.provider_ods, row.tenant_ods, row.month): row.restated_at
            for row in tx.connection.execute(
                select(_restatement).where(
                    key_columns.in_([(k.provider_ods, k.tenant_ods, k.month) for k in keys])
                )
            )
        }
        for key in keys:
            at = restatements[key]
            values = {"month": key.month, "provider_ods": key.provider_ods, "tenant_ods": key.tenant_ods}
            if key not in existing:
                tx.connection.execute(insert(_restatement), [values | {"restated_at": at}])
            elif at > existing[key]:
                tx.connection.execute(
                    update(_restatement)
                    .where(
                        _restatement.c.month == key.month,
                        _restatement.c.provider_ods == key.provider_ods,
                        _restatement.c.tenant_ods == key.tenant_ods,
                    )
                    .values(restated_at=at)
                )
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI restatements could not be written: {type(exc).__name__}") from exc


def read_cells(
    tx: Tx,
    *,
    months: Sequence[str],
    provider_ods: str | None = None,
    tenant_ods: str | None = None,
    measures: Iterable[str] | None = None,
) -> list[StoredCell]:
    """The stored cells of `months`, narrowed to a provider, a trust and measures when given."""
    conditions = [_monthly.c.month.in_(list(months))]
    if provider_ods is not None:
        conditions.append(_monthly.c.provider_ods == provider_ods)
    if tenant_ods is not None:
        conditions.append(_monthly.c.tenant_ods == tenant_ods)
    if measures is not None:
        conditions.append(_monthly.c.measure.in_(list(measures)))
    try:
        rows = tx.connection.execute(select(_monthly).where(*conditions)).all()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI figures could not be read: {type(exc).__name__}") from exc
    return [StoredCell(_key_of(row), _figures_from(row), row.updated_at) for row in rows]


def read_restatements(
    tx: Tx,
    *,
    months: Sequence[str],
    provider_ods: str | None = None,
    tenant_ods: str | None = None,
) -> list[Restatement]:
    conditions = [_restatement.c.month.in_(list(months))]
    if provider_ods is not None:
        conditions.append(_restatement.c.provider_ods == provider_ods)
    if tenant_ods is not None:
        conditions.append(_restatement.c.tenant_ods == tenant_ods)
    try:
        rows = tx.connection.execute(select(_restatement).where(*conditions)).all()
    except SQLAlchemyError as exc:
        raise KpiStoreError(f"the KPI restatements could not be read: {type(exc).__name__}") from exc
    return [
        Restatement(MonthKey(row.provider_ods, row.tenant_ods, row.month), row.restated_at) for row in rows
    ]
