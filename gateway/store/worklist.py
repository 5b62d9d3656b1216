"""What the clinician pages read: a trust's worklist (action needed first), one prescription's record
(items, events, message), and per-provider figures. Every query carries the caller's tenancy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    union,
)

from auth.identity import Caller
from auth.tenancy import visible_filter
from gateway.store.db import Tx
from gateway.store.models import (
    InboundMessage,
    Prescription,
    PrescriptionItem,
    Provider,
    StatusEvent,
)
from gateway.store.run_out import open_alert_prescriptions

_prescription = Prescription.__table__  # type: ignore[attr-defined]
_item = PrescriptionItem.__table__  # type: ignore[attr-defined]
_event = StatusEvent.__table__  # type: ignore[attr-defined]
_message = InboundMessage.__table__  # type: ignore[attr-defined]
_provider = Provider.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    """Which of the caller's prescriptions to list. Searches match exactly."""

    provider_ods: str | None = None
    status: str | None = None
    active_from: datetime | None = None
    active_before: datetime | None = None
    short_form_id: str | None = None
    nhs_number: str | None = None


@dataclass(frozen=True, slots=True)
class ActionRules:
    """The moments that decide what needs action (see gateway/domain/worklist.py for the rules)."""

    now: datetime
    accept_by: datetime  # created before this and still not accepted
    expiring_before: datetime  # validity ends before this with nothing dispensed
    recent_since: datetime  # rejections and refused cancellations since this
    waiting_statuses: tuple[str, ...]  # not yet accepted
    live_statuses: tuple[str, ...]  # nothing dispensed yet
    urgent_attention: tuple[str, ...]  # item statuses that need action for as long as they last
    recent_attention: tuple[str, ...]  # item statuses that need action while recent


@dataclass(frozen=True, slots=True)
class PrescriptionRow:
    prescription_id: str
    short_form_id: str
    tenant_ods: str
    provider_ods: str
    nhs_number: str
    status: str
    partial: bool
    status_since: datetime | None
    created_at: datetime
    updated_at: datetime
    valid_until: datetime | None
    message_id: str
    reasons: tuple[str, ...] = ()  # why it needs action (ActionRules), most urgent first


@dataclass(frozen=True, slots=True)
class ItemRow:
    item_id: str
    prescription_id: str
    position: int
    item_identifier: str
    medicine: str | None
    status: str
    resume_status: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: int
    item_id: str | None
    status: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    detail: dict[str, Any]
    verdict: str | None


@dataclass(frozen=True, slots=True)
class ProviderName:
    ods_code: str
    name: str


@dataclass(frozen=True, slots=True)
class StatusCount:
    provider_ods: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class Acceptance:
    provider_ods: str
    created_at: datetime
    accepted_at: datetime


_ROW_COLUMNS = (
    _prescription.c.id,
    _prescription.c.short_form_id,
    _prescription.c.tenant_ods,
    _prescription.c.provider_ods,
    _prescription.c.nhs_number,
    _prescription.c.status,
    _prescription.c.partial,
    _prescription.c.status_since,
    _prescription.c.created_at,
    _prescription.c.updated_at,
    _prescription.c.valid_until,
    _prescription.c.message_id,
)


def _prescription_row(row: Any, reasons: tuple[str, ...] = ()) -> PrescriptionRow:
    return replace(PrescriptionRow(*row[: len(_ROW_COLUMNS)]), reasons=reasons)


def _visible(caller: Caller) -> ColumnElement[bool]:
    return visible_filter(
        caller, tenant_column=_prescription.c.tenant_ods, provider_column=_prescription.c.provider_ods
    )


def _item_visible(caller: Caller) -> ColumnElement[bool]:
    return visible_filter(caller, tenant_column=_item.c.tenant_ods, provider_column=_item.c.provider_ods)


def _action_rules(caller: Caller, rules: ActionRules) -> dict[str, ColumnElement[bool]]:
    """Each reason for action as a condition on the prescription row, most urgent first.

    Item-level statuses are read from `attention` (kept with the derived status), so every rule is a
    condition on the prescription itself: the worklist never reads a trust's line items to find
    them. A cancellation refused lately is found from the (few) recent cancel requests.
    """
    p = _prescription.c
    refused_cancellations = (
        select(_item.c.prescription_id)
        .join(_event, _event.c.item_id == _item.c.id)
        .where(
            _item_visible(caller),
            _event.c.status == "cancel-requested",
            _event.c.recorded_at >= rules.recent_since,
            _item.c.status.not_in(("cancel-requested", "cancelled")),
        )
    )
    # Every condition is true or false, never NULL: the rows needing no action are its negation.
    flagged = p.attention.is_not(None)
    found: dict[str, ColumnElement[bool]] = {
        status: and_(flagged, p.attention == status) for status in rules.urgent_attention
    }
    # A run-out warning still open (gateway.kpi.watch) on an order of this prescription.
    found["at-risk"] = p.id.in_(open_alert_prescriptions())
    found.update(
        {
            status: and_(flagged, p.attention == status, p.updated_at >= rules.recent_since)
            for status in rules.recent_attention
        }
    )
    found["cancel-refused"] = p.id.in_(refused_cancellations)
    found["expiring"] = and_(
        p.valid_until.is_not(None),
        p.valid_until >= rules.now,
        p.valid_until < rules.expiring_before,
        p.status.in_(rules.live_statuses),
    )
    found["not-accepted"] = and_(p.status.in_(rules.waiting_statuses), p.created_at < rules.accept_by)
    return found


def _needs_action(caller: Caller, rules: ActionRules) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = or_(*_action_rules(caller, rules).values())
    return condition


def _with_reasons(caller: Caller, rules: ActionRules) -> list[Any]:
    return [
        case((condition, literal(reason)), else_=null()).label(f"reason_{position}")
        for position, (reason, condition) in enumerate(_action_rules(caller, rules).items())
    ]


def _flagged_row(row: Any) -> PrescriptionRow:
    reasons = tuple(str(reason) for reason in row[len(_ROW_COLUMNS) :] if reason is not None)
    return _prescription_row(row, reasons)


def _filters(caller: Caller, chosen: WorklistFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [_visible(caller)]
    if chosen.provider_ods:
        conditions.append(_prescription.c.provider_ods == chosen.provider_ods)
    if chosen.status:
        conditions.append(_prescription.c.status == chosen.status)
    if chosen.active_from:
        conditions.append(_prescription.c.updated_at >= chosen.active_from)
    if chosen.active_before:
        conditions.append(_prescription.c.updated_at < chosen.active_before)
    if chosen.short_form_id:
        conditions.append(_prescription.c.short_form_id == chosen.short_form_id)
    if chosen.nhs_number:
        conditions.append(_prescription.c.nhs_number == chosen.nhs_number)
    return conditions


def count_all(tx: Tx, caller: Caller, chosen: WorklistFilter) -> int:
    """Every prescription of the caller's that matches the filter."""
    query = select(func.count()).select_from(_prescription).where(*_filters(caller, chosen))
    return int(tx.connection.execute(query).scalar_one())


def count_needing_action(tx: Tx, caller: Caller, chosen: WorklistFilter, rules: ActionRules) -> int:
    """How many match the filter and need action: one indexed query per rule, their ids united
    (testing every rule on every row would read the trust's whole table)."""
    filters = _filters(caller, chosen)
    flagged = union(
        *(select(_prescription.c.id).where(*filters, rule) for rule in _action_rules(caller, rules).values())
    ).subquery()
    return int(tx.connection.execute(select(func.count()).select_from(flagged)).scalar_one())


def rows_needing_action(
    tx: Tx,
    caller: Caller,
    chosen: WorklistFilter,
    rules: ActionRules,
    *,
    offset: int,
    limit: int,
) -> list[PrescriptionRow]:
    """A page of the prescriptions needing action, newest activity first, each with its reasons."""
    rows = tx.connection.execute(
        select(*_ROW_COLUMNS, *_with_reasons(caller, rules))
        .where(*_filters(caller, chosen), _needs_action(caller, rules))
        .order_by(_prescription.c.updated_at.desc(), _prescription.c.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return [_flagged_row(row) for row in rows]


def other_rows(
    tx: Tx,
    caller: Caller,
    chosen: WorklistFilter,
    rules: ActionRules,
    *,
    offset: int,
    limit: int,
) -> list[PrescriptionRow]:
    """A page of the prescriptions needing no action, newest activity first."""
    rows = tx.connection.execute(
        select(*_ROW_COLUMNS)
        .where(*_filters(caller, chosen), not_(_needs_action(caller, rules)))
        .order_by(_prescription.c.updated_at.desc(), _prescription.c.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return [_prescription_row(row) for row in rows]


def items_of(tx: Tx, prescription_ids: Sequence[str]) -> list[ItemRow]:
    if not prescription_ids:
        return []
    rows = tx.connection.execute(
        select(
            _item.c.id,
            _item.c.prescription_id,
            _item.c.position,
            _item.c.item_identifier,
            _item.c.medicine,
            _item.c.status,
            _item.c.resume_status,
            _item.c.updated_at,
        )
        .where(_item.c.prescription_id.in_(list(prescription_ids)))
        .order_by(_item.c.prescription_id, _item.c.position)
    ).all()
    return [ItemRow(*row) for row in rows]


def item_resources(tx: Tx, prescription_id: str) -> dict[str, bytes]:
    """Each item's MedicationRequest as the trust sent it, by item id."""
    rows = tx.connection.execute(
        select(_item.c.id, _item.c.resource).where(_item.c.prescription_id == prescription_id)
    ).all()
    return {row[0]: row[1] for row in rows}


def message_bodies(tx: Tx, message_ids: Sequence[str]) -> dict[str, bytes]:
    if not message_ids:
        return {}
    rows = tx.connection.execute(
        select(_message.c.id, _message.c.body).where(_message.c.id.in_(list(message_ids)))
    ).all()
    return {row[0]: row[1] for row in rows}


def find_prescription(
    tx: Tx, caller: Caller, prescription_id: str, rules: ActionRules
) -> PrescriptionRow | None:
    row = tx.connection.execute(
        select(*_ROW_COLUMNS, *_with_reasons(caller, rules)).where(
            _prescription.c.id == prescription_id, _visible(caller)
        )
    ).first()
    return _flagged_row(row) if row else None


def events_of(tx: Tx, prescription_id: str) -> list[EventRow]:
    rows = tx.connection.execute(
        select(
            _event.c.id,
            _event.c.item_id,
            _event.c.status,
            _event.c.occurred_at,
            _event.c.recorded_at,
            _event.c.source,
            _event.c.detail,
            _event.c.verdict,
        )
        .where(_event.c.prescription_id == prescription_id)
        .order_by(_event.c.id)
    ).all()
    return [
        EventRow(
            int(row[0]),
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6] if isinstance(row[6], dict) else {},
            row[7],
        )
        for row in rows
    ]


def provider_names(tx: Tx) -> list[ProviderName]:
    rows = tx.connection.execute(
        select(_provider.c.ods_code, _provider.c.name).order_by(_provider.c.name)
    ).all()
    return [ProviderName(row[0], row[1]) for row in rows]


def latest_activity(tx: Tx, caller: Caller, prescription_id: str | None = None) -> str:
    """A stamp that changes whenever something the page shows changes (for live updates)."""
    query = select(_prescription.c.updated_at, _prescription.c.id).where(_visible(caller))
    if prescription_id is not None:
        query = query.where(_prescription.c.id == prescription_id)
    row = tx.connection.execute(
        query.order_by(_prescription.c.updated_at.desc(), _prescription.c.id.desc()).limit(1)
    ).first()
    return f"{row[0].isoformat()}/{row[1]}" if row else "-"


def status_counts(tx: Tx, caller: Caller) -> list[StatusCount]:
    rows = tx.connection.execute(
        select(_prescription.c.provider_ods, _prescription.c.status, func.count())
        .where(_visible(caller))
        .group_by(_prescription.c.provider_ods, _prescription.c.status)
    ).all()
    return [StatusCount(row[0], row[1], int(row[2])) for row in rows]


def event_counts_since(
    tx: Tx, caller: Caller, *, statuses: Sequence[str], since: datetime
) -> list[StatusCount]:
    """Applied events of the given statuses since `since`, per provider (e.g. failed deliveries)."""
    rows = tx.connection.execute(
        select(_prescription.c.provider_ods, _event.c.status, func.count())
        .join(_prescription, _prescription.c.id == _event.c.prescription_id)
        .where(
            _visible(caller),
            _event.c.status.in_(list(statuses)),
            _event.c.recorded_at >= since,
            and_(_event.c.verdict.is_(None) | (_event.c.verdict == "applied")),
        )
        .group_by(_prescription.c.provider_ods, _event.c.status)
    ).all()
    return [StatusCount(row[0], row[1], int(row[2])) for row in rows]


def acceptances_since(tx: Tx, caller: Caller, *, since: datetime) -> list[Acceptance]:
    """When each prescription accepted since `since` was first accepted, beside when it arrived."""
    first_accepted = func.min(_event.c.recorded_at)
    rows = tx.connection.execute(
        select(_prescription.c.provider_ods, _prescription.c.created_at, first_accepted)
        .join(_prescription, _prescription.c.id == _event.c.prescription_id)
        .where(_visible(caller), _event.c.status == "accepted", _event.c.recorded_at >= since)
        .group_by(_prescription.c.id, _prescription.c.provider_ods, _prescription.c.created_at)
    ).all()
    return [Acceptance(row[0], row[1], row[2]) for row in rows]
