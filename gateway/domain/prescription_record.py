"""One prescription as a clinician sees it: the patient, the medicines and dosage, the provider, the
status in words, the full timeline from the event log (who, what, when, why), the deliveries and the
query threads. Read for the caller's trust only (another trust's prescription is not found) and
audited with the person's name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from auth.identity import Caller
from fhir_profiles.medication import (
    birth_date,
    dosage_text,
    message_patient,
    patient_name,
    quantity_text,
)
from gateway.domain import access, provider_queries
from gateway.domain.context import Context
from gateway.domain.reads import not_found
from gateway.domain.status import BEFORE_DISPENSED, GATEWAY_SOURCE, Status
from gateway.domain.worklist import RUN_OUT_RISK, ActionSettings, action_rules, action_words, status_words
from gateway.store import run_out as run_out_store
from gateway.store import worklist as store

DELIVERY_STATUSES = frozenset(
    {Status.DELIVERY_SCHEDULED, Status.OUT_FOR_DELIVERY, Status.DELIVERED, Status.DELIVERY_FAILED}
)
_RESPONSIBLE = {
    "patient": "the patient",
    "trust": "the trust",
    "provider": "the provider",
    "courier": "the courier",
}


@dataclass(frozen=True, slots=True)
class ItemDetails:
    item_id: str
    item_identifier: str
    label: str  # "Item 1"
    medicine: str
    dosage: str | None
    quantity: str | None
    status: str
    status_words: str
    cancellable: bool


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    recorded_at: datetime
    occurred_at: datetime
    who: str
    what: str
    why: str | None
    applies_to: str


@dataclass(frozen=True, slots=True)
class DeliveryEntry:
    occurred_at: datetime
    attempt: int | None
    outcome: str
    cause: str | None
    window: str | None
    applies_to: str


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    author: str
    text: str
    sent: datetime | None


@dataclass(frozen=True, slots=True)
class QueryThread:
    item_id: str
    label: str
    awaiting_answer: bool
    messages: tuple[ThreadMessage, ...]


@dataclass(frozen=True, slots=True)
class PrescriptionRecord:
    prescription_id: str
    short_form_id: str
    patient_name: str | None
    nhs_number: str
    birth_date: str | None
    provider_name: str
    provider_ods: str
    status: str
    status_words: str
    partial: bool
    in_status_since: datetime
    received_at: datetime
    valid_until: datetime | None
    items: tuple[ItemDetails, ...]
    timeline: tuple[TimelineEntry, ...]
    deliveries: tuple[DeliveryEntry, ...]
    threads: tuple[QueryThread, ...]
    actions: tuple[str, ...]

    @property
    def cancellable_items(self) -> tuple[ItemDetails, ...]:
        return tuple(item for item in self.items if item.cancellable)


def prescription_record(
    ctx: Context,
    *,
    caller: Caller,
    prescription_id: str,
    settings: ActionSettings,
    request_id: str,
) -> PrescriptionRecord:
    db, clock = ctx.db, ctx.clock
    with db.snapshot() as tx:
        row = store.find_prescription(tx, caller, prescription_id, action_rules(settings, clock()))
        if row is not None:
            items = store.items_of(tx, [prescription_id])
            resources = store.item_resources(tx, prescription_id)
            events = store.events_of(tx, prescription_id)
            body = store.message_bodies(tx, [row.message_id]).get(row.message_id)
            names = {provider.ods_code: provider.name for provider in store.provider_names(tx)}
            run_out = run_out_store.open_run_out_dates(tx, [prescription_id])
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Prescription",
        resource_id=prescription_id,
        found=row is not None,
        request_id=request_id,
        clock=clock,
    )
    if row is None:
        raise not_found("prescription")
    patient = message_patient(_json(body))
    labels = {item.item_id: f"Item {item.position + 1}" for item in items}
    details = tuple(
        _item_details(item, _json(resources.get(item.item_id)), labels[item.item_id]) for item in items
    )
    queried = {event.item_id for event in events if event.status == Status.QUERY.value and event.item_id}
    threads = tuple(
        _thread(ctx, caller, item, labels[item.item_id], names, request_id)
        for item in items
        if item.item_id in queried
    )
    return PrescriptionRecord(
        prescription_id=row.prescription_id,
        short_form_id=row.short_form_id,
        patient_name=patient_name(patient),
        nhs_number=row.nhs_number,
        birth_date=birth_date(patient),
        provider_name=names.get(row.provider_ods, row.provider_ods),
        provider_ods=row.provider_ods,
        status=row.status,
        status_words=status_words(row.status),
        partial=row.partial,
        in_status_since=row.status_since or row.updated_at,
        received_at=row.created_at,
        valid_until=row.valid_until,
        items=details,
        timeline=tuple(_timeline(events, labels, names, caller)),
        deliveries=tuple(_deliveries(events, labels, len(items))),
        threads=threads,
        actions=action_words(row.reasons, run_out.get(prescription_id)),
    )


def _json(body: bytes | None) -> Any:
    if body is None:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}


def _item_details(item: store.ItemRow, resource: Any, label: str) -> ItemDetails:
    status = Status(item.status)
    return ItemDetails(
        item_id=item.item_id,
        item_identifier=item.item_identifier,
        label=label,
        medicine=item.medicine or "Medicine not named",
        dosage=dosage_text(resource),
        quantity=quantity_text(resource),
        status=item.status,
        status_words=status_words(item.status),
        cancellable=status in BEFORE_DISPENSED,
    )


def _who(source: str, names: dict[str, str], caller: Caller) -> str:
    kind, _, ods = source.partition(":")
    if source == GATEWAY_SOURCE:
        return "Homecare gateway"
    if kind == "provider":
        return names.get(ods, ods)
    if kind == "trust":
        return "Your trust" if ods == caller.ods_code else ods
    return source


# Why a run-out warning was raised (gateway.kpi.run_out's reasons), in words.
RUN_OUT_REASONS = {
    "no-next-order": "no next supply is ordered",
    "no-delivery-date": "the next supply has no delivery date yet",
    "delivery-after-run-out": "the next delivery is booked for that day or later",
}


def _why(event: store.EventRow) -> str | None:
    detail = event.detail
    if event.status == RUN_OUT_RISK and isinstance(detail.get("run_out_on"), str):
        because = RUN_OUT_REASONS.get(str(detail.get("reason")), "")
        return f"Runs out on {detail['run_out_on']}" + (f": {because}" if because else "")
    reason = detail.get("reason")
    text = None
    if isinstance(reason, dict):
        text = reason.get("text") or reason.get("code")
    parts = []
    if detail.get("cancellation_answer") == "refused":
        parts.append("Cancellation refused")
    elif detail.get("cancellation_answer") == "agreed":
        parts.append("Cancellation agreed")
    if detail.get("query_answered"):
        parts.append("Query answered")
    if text:
        parts.append(str(text))
    if isinstance(detail.get("note"), str):
        parts.append(detail["note"])
    party = detail.get("responsible_party")
    if isinstance(party, str) and party in _RESPONSIBLE:
        parts.append(f"caused by {_RESPONSIBLE[party]}")
    if event.status == Status.RECEIVED.value and isinstance(detail.get("items"), int):
        parts.append(f"{detail['items']} line item(s)")
    return "; ".join(parts) or None


def _timeline(
    events: list[store.EventRow], labels: dict[str, str], names: dict[str, str], caller: Caller
) -> list[TimelineEntry]:
    entries = []
    for event in events:
        what = status_words(event.status)
        if event.verdict == "duplicate":
            what += " (repeated report: no change)"
        elif event.verdict == "superseded":
            what += " (late report: kept in the history, no change)"
        entries.append(
            TimelineEntry(
                recorded_at=event.recorded_at,
                occurred_at=event.occurred_at,
                who=_who(event.source, names, caller),
                what=what,
                why=_why(event),
                applies_to=labels.get(event.item_id or "", "Whole prescription"),
            )
        )
    return entries


def _deliveries(events: list[store.EventRow], labels: dict[str, str], item_count: int) -> list[DeliveryEntry]:
    """Delivery steps, one entry for what happened to several items at once."""
    grouped: dict[tuple[str, datetime, Any], list[str]] = {}
    details: dict[tuple[str, datetime, Any], store.EventRow] = {}
    for event in events:
        if event.status not in DELIVERY_STATUSES or event.verdict not in (None, "applied"):
            continue
        key = (event.status, event.occurred_at, event.detail.get("delivery_attempt"))
        grouped.setdefault(key, []).append(labels.get(event.item_id or "", "?"))
        details.setdefault(key, event)
    entries = []
    for key, items in grouped.items():
        event = details[key]
        window = event.detail.get("delivery_window")
        shown_window = (
            f"{window.get('start', '?')} to {window.get('end', '?')}" if isinstance(window, dict) else None
        )
        attempt = event.detail.get("delivery_attempt")
        entries.append(
            DeliveryEntry(
                occurred_at=event.occurred_at,
                attempt=attempt if isinstance(attempt, int) else None,
                outcome=status_words(event.status),
                cause=_why(event) if event.status == Status.DELIVERY_FAILED.value else None,
                window=shown_window,
                applies_to="All items" if len(items) == item_count else ", ".join(items),
            )
        )
    return entries


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _thread(
    ctx: Context,
    caller: Caller,
    item: store.ItemRow,
    label: str,
    names: dict[str, str],
    request_id: str,
) -> QueryThread:
    # The thread comes from the same service as GET /fhir/Communication?about=Task/{id}.
    bundle = provider_queries.query_thread(ctx, caller=caller, item_id=item.item_id, request_id=request_id)
    messages = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        sender = resource.get("sender", {})
        ods = sender.get("identifier", {}).get("value", "")
        author = "Your trust" if sender.get("display") == "trust" else names.get(ods, ods)
        text = next(
            (p.get("contentString") for p in resource.get("payload", []) if p.get("contentString")), ""
        )
        messages.append(ThreadMessage(author=author, text=str(text), sent=_instant(resource.get("sent"))))
    return QueryThread(
        item_id=item.item_id,
        label=label,
        awaiting_answer=item.status == Status.QUERY.value,
        messages=tuple(messages),
    )
