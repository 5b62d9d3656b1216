"""Line items (one per MedicationRequest) and their prescriptions: finding, locking, searching, and
writing the status the status authority decided. Only `gateway.domain.status_authority` calls
`write_status` and `write_prescription_status`; everything else reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, or_, select, update

from auth.identity import Caller
from auth.tenancy import visible_filter
from gateway.store.db import Tx
from gateway.store.models import Prescription, PrescriptionItem

item_table = PrescriptionItem.__table__  # type: ignore[attr-defined]
prescription_table = Prescription.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ItemView:
    """What the gateway shows of one line item (read from the item and its prescription)."""

    item_id: str
    item_identifier: str
    prescription_id: str
    short_form_id: str
    tenant_ods: str
    provider_ods: str
    nhs_number: str
    status: str
    version: int
    last_modified: datetime | None
    updated_at: datetime
    created_at: datetime
    prescription_status: str
    partial: bool
    # The status a query or a cancel request interrupted: where it returns to.
    resume_status: str | None
    # The medicine's name as the trust wrote it (None for items stored before it was kept).
    medicine: str | None


_VIEW_COLUMNS = {
    "item_id": item_table.c.id,
    "item_identifier": item_table.c.item_identifier,
    "prescription_id": item_table.c.prescription_id,
    "short_form_id": prescription_table.c.short_form_id,
    "tenant_ods": item_table.c.tenant_ods,
    "provider_ods": item_table.c.provider_ods,
    "nhs_number": prescription_table.c.nhs_number,
    "status": item_table.c.status,
    "version": item_table.c.version,
    "last_modified": item_table.c.last_modified,
    "updated_at": item_table.c.updated_at,
    "created_at": prescription_table.c.created_at,
    "prescription_status": prescription_table.c.status,
    "partial": prescription_table.c.partial,
    "resume_status": item_table.c.resume_status,
    "medicine": item_table.c.medicine,
}
assert list(_VIEW_COLUMNS) == [field.name for field in fields(ItemView)]


def _views() -> Select[Any]:
    return select(*(column.label(name) for name, column in _VIEW_COLUMNS.items())).join(
        prescription_table, prescription_table.c.id == item_table.c.prescription_id
    )


def _view(row: Any) -> ItemView:
    return ItemView(**row._mapping)


@dataclass(frozen=True, slots=True)
class ItemKey:
    """How a caller names an item: by the gateway's id, or by prescription ID and line-item ID as a
    provider (the items routed to it) or a trust (the items it sent) knows them."""

    item_id: str | None = None
    short_form_id: str | None = None
    item_identifier: str | None = None
    provider_ods: str | None = None
    tenant_ods: str | None = None

    @classmethod
    def by_id(cls, item_id: str) -> ItemKey:
        return cls(item_id=item_id)

    @classmethod
    def at_provider(cls, short_form_id: str, item_identifier: str, provider_ods: str) -> ItemKey:
        return cls(short_form_id=short_form_id, item_identifier=item_identifier, provider_ods=provider_ods)

    @classmethod
    def of_trust(cls, short_form_id: str, item_identifier: str, tenant_ods: str) -> ItemKey:
        return cls(short_form_id=short_form_id, item_identifier=item_identifier, tenant_ods=tenant_ods)

    def condition(self) -> ColumnElement[bool]:
        if self.item_id is not None:
            by_id: ColumnElement[bool] = item_table.c.id == self.item_id
            return by_id
        conditions = [
            prescription_table.c.short_form_id == self.short_form_id,
            item_table.c.item_identifier == self.item_identifier,
        ]
        if self.provider_ods is not None:
            conditions.append(item_table.c.provider_ods == self.provider_ods)
        if self.tenant_ods is not None:
            conditions.append(item_table.c.tenant_ods == self.tenant_ods)
        return and_(*conditions)


def visible_to(caller: Caller) -> ColumnElement[bool]:
    """The tenancy rule (auth.tenancy) over the item table: what this caller may see."""
    return visible_filter(
        caller, tenant_column=item_table.c.tenant_ods, provider_column=item_table.c.provider_ods
    )


def prescription_visible_to(caller: Caller) -> ColumnElement[bool]:
    """The same rule over the prescription table."""
    return visible_filter(
        caller,
        tenant_column=prescription_table.c.tenant_ods,
        provider_column=prescription_table.c.provider_ods,
    )


def find(tx: Tx, key: ItemKey, *, caller: Caller | None = None, for_change: bool = False) -> ItemView | None:
    """The item `key` names (and `caller` may see); locked for a change when `for_change`."""
    query = _views().where(key.condition())
    if caller is not None:
        query = query.where(visible_to(caller))
    if for_change and tx.locks_rows:
        query = query.with_for_update(of=item_table)
    row = tx.connection.execute(query).first()
    return None if row is None else _view(row)


def of_prescription(
    tx: Tx, prescription_id: str, *, statuses: Sequence[str] | None = None, for_change: bool = False
) -> list[ItemView]:
    """The prescription's items in their order (only those in `statuses`, when given)."""
    query = _views().where(item_table.c.prescription_id == prescription_id).order_by(item_table.c.position)
    if statuses is not None:
        query = query.where(item_table.c.status.in_(list(statuses)))
    if for_change and tx.locks_rows:
        query = query.with_for_update(of=item_table)
    return [_view(row) for row in tx.connection.execute(query)]


def of_prescriptions(tx: Tx, prescription_ids: Sequence[str], *, statuses: Sequence[str]) -> list[ItemView]:
    """The items in `statuses` of several prescriptions, each prescription's in their order."""
    if not prescription_ids:
        return []
    query = (
        _views()
        .where(
            item_table.c.prescription_id.in_(list(prescription_ids)),
            item_table.c.status.in_(list(statuses)),
        )
        .order_by(item_table.c.prescription_id, item_table.c.position)
    )
    return [_view(row) for row in tx.connection.execute(query)]


def with_ids(tx: Tx, item_ids: Sequence[str]) -> list[ItemView]:
    rows = tx.connection.execute(_views().where(item_table.c.id.in_(list(item_ids))))
    return [_view(row) for row in rows]


def past_validity(tx: Tx, *, now: datetime, statuses: Sequence[str], limit: int) -> list[ItemView]:
    """Items in `statuses` whose prescription's validity period ended before `now`."""
    query = (
        _views()
        .where(prescription_table.c.valid_until < now, item_table.c.status.in_(list(statuses)))
        .limit(limit)
    )
    return [_view(row) for row in tx.connection.execute(query)]


def write_status(
    tx: Tx, item_id: str, *, status: str, resume: str | None, last_modified: datetime | None, now: datetime
) -> None:
    """The item's new status, as the status authority decided it (nobody else calls this)."""
    tx.connection.execute(
        update(item_table)
        .where(item_table.c.id == item_id)
        .values(
            status=status,
            resume_status=resume,
            last_modified=last_modified,
            version=item_table.c.version + 1,
            updated_at=now,
        )
    )


def statuses_of(tx: Tx, prescription_id: str) -> list[str]:
    rows = tx.connection.execute(
        select(item_table.c.status).where(item_table.c.prescription_id == prescription_id)
    )
    return [row.status for row in rows]


def write_prescription_status(
    tx: Tx, prescription_id: str, *, status: str, partial: bool, attention: str | None, now: datetime
) -> None:
    """The prescription's status and what among its items needs the trust's attention, derived by the
    status authority from its items."""
    tx.connection.execute(
        update(prescription_table)
        .where(prescription_table.c.id == prescription_id)
        .values(
            status=status,
            partial=partial,
            attention=attention,
            updated_at=now,
            # "Time in status" counts from the last change of the derived status, not of any item.
            status_since=case(
                (prescription_table.c.status == status, prescription_table.c.status_since), else_=now
            ),
        )
    )


# --- Search -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What a Task search asks for (already checked by the domain). Unset fields do not filter."""

    provider_ods: str | None = None
    tenant_ods: str | None = None
    statuses: tuple[str, ...] | None = None
    item_identifier: str | None = None
    short_form_id: str | None = None
    nhs_number: str | None = None
    updated: tuple[tuple[str, datetime], ...] = ()
    """(prefix, moment) pairs over the last update: gt, ge, lt, le, eq."""


@dataclass(frozen=True, slots=True)
class Page:
    """Keyset paging over (updated_at, id): the last row of the previous page, and the direction."""

    count: int
    newest_first: bool = True
    after: tuple[datetime, str] | None = None


def search(tx: Tx, *, caller: Caller, wanted: TaskFilter, page: Page) -> list[ItemView]:
    """Up to `page.count + 1` items the caller may see (one more than asked: there is a next page)."""
    conditions = [visible_to(caller), *_filter_conditions(wanted)]
    updated, item_id = item_table.c.updated_at, item_table.c.id
    if page.after is not None:
        moment, last_id = page.after
        if page.newest_first:
            conditions.append(or_(updated < moment, and_(updated == moment, item_id < last_id)))
        else:
            conditions.append(or_(updated > moment, and_(updated == moment, item_id > last_id)))
    order = (updated.desc(), item_id.desc()) if page.newest_first else (updated, item_id)
    query = _views().where(*conditions).order_by(*order).limit(page.count + 1)
    return [_view(row) for row in tx.connection.execute(query)]


def _filter_conditions(wanted: TaskFilter) -> list[ColumnElement[bool]]:
    equal = (
        (item_table.c.provider_ods, wanted.provider_ods),
        (item_table.c.tenant_ods, wanted.tenant_ods),
        (item_table.c.item_identifier, wanted.item_identifier),
        (prescription_table.c.short_form_id, wanted.short_form_id),
        (prescription_table.c.nhs_number, wanted.nhs_number),
    )
    conditions: list[ColumnElement[bool]] = [column == value for column, value in equal if value is not None]
    if wanted.statuses is not None:
        conditions.append(item_table.c.status.in_(wanted.statuses))
    column = item_table.c.updated_at
    comparisons = {
        "gt": column.__gt__,
        "ge": column.__ge__,
        "lt": column.__lt__,
        "le": column.__le__,
        "eq": column.__eq__,
    }
    conditions += [comparisons[prefix](moment) for prefix, moment in wanted.updated]
    return conditions
