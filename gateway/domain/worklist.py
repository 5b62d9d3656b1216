"""The clinician worklist and provider overview: one trust's prescriptions across every provider,
what needs action first, and per-provider figures. Every read is audited with the person's name.

Action needed (any line item of the prescription):
- `query`: the provider asked a question that waits for the trust's answer;
- `rejected`: the provider declined an item in the last `recent` days;
- `delivery-failed`: a delivery attempt failed and nothing has been rescheduled yet;
- `undeliverable`: the gateway could not reach the provider after its retries;
- `cancel-refused`: a cancellation asked for in the last `recent` days that the provider refused;
- `expiring`: the validity period ends within `expiring` days and nothing has been dispensed;
- `not-accepted`: the provider has not accepted the order `acceptance` hours after it arrived;
- `at-risk`: a run-out warning is open on an order of the prescription: the patient may run out
  (on the date shown) before the next supply arrives (gateway.kpi.watch raises and closes them).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

import orjson

from auth.audit import Action
from auth.identity import Caller
from fhir_profiles.medication import initials, masked_nhs_number, message_patient, patient_name
from gateway.domain import access
from gateway.domain.context import Context
from gateway.domain.status import BEFORE_DISPENSED, Status
from gateway.store import run_out as run_out_store
from gateway.store import worklist as store
from gateway.store.db import Database, Tx
from gateway.store.worklist import ActionRules, WorklistFilter


class ActionReason(StrEnum):
    QUERY = "query"
    REJECTED = "rejected"
    DELIVERY_FAILED = "delivery-failed"
    UNDELIVERABLE = "undeliverable"
    CANCEL_REFUSED = "cancel-refused"
    EXPIRING = "expiring"
    NOT_ACCEPTED = "not-accepted"
    AT_RISK = "at-risk"


ACTION_WORDS: dict[ActionReason, str] = {
    ActionReason.QUERY: "Provider query awaiting your answer",
    ActionReason.REJECTED: "Rejected by the provider",
    ActionReason.DELIVERY_FAILED: "Delivery failed",
    ActionReason.UNDELIVERABLE: "The gateway cannot reach the provider",
    ActionReason.CANCEL_REFUSED: "The provider refused the cancellation",
    ActionReason.EXPIRING: "Expiring soon with nothing dispensed",
    ActionReason.NOT_ACCEPTED: "Not yet accepted by the provider",
    ActionReason.AT_RISK: "At risk of running out",
}
RUN_OUT_RISK = "run-out-risk"

# A business status as a person reads it.
STATUS_WORDS: dict[Status, str] = {
    Status.RECEIVED: "Received",
    Status.QUEUED: "Waiting to be sent",
    Status.SENT: "Sent to provider",
    Status.ACCEPTED: "Accepted by provider",
    Status.REJECTED: "Rejected by provider",
    Status.QUERY: "Query from provider",
    Status.IN_PREPARATION: "Being prepared",
    Status.DISPENSED: "Dispensed",
    Status.DELIVERY_SCHEDULED: "Delivery booked",
    Status.OUT_FOR_DELIVERY: "Out for delivery",
    Status.DELIVERED: "Delivered",
    Status.DELIVERY_FAILED: "Delivery failed",
    Status.CANCEL_REQUESTED: "Cancellation requested",
    Status.CANCELLED: "Cancelled",
    Status.EXPIRED: "Expired",
    Status.UNDELIVERABLE: "Cannot reach provider",
}


def action_words(reasons: Sequence[str], run_out_on: date | None = None) -> tuple[str, ...]:
    """The reasons as a person reads them; a run-out warning with its date."""
    words = []
    for reason in reasons:
        text = ACTION_WORDS[ActionReason(reason)]
        if reason == ActionReason.AT_RISK and run_out_on is not None:
            text = f"{text} on {run_out_on.day} {run_out_on:%B %Y}"
        words.append(text)
    return tuple(words)


def status_words(status: str) -> str:
    if status == RUN_OUT_RISK:
        return "Run-out warning"
    try:
        return STATUS_WORDS[Status(status)]
    except ValueError:
        return status


@dataclass(frozen=True, slots=True)
class ActionSettings:
    acceptance: timedelta
    expiring: timedelta
    recent: timedelta


def action_rules(settings: ActionSettings, now: datetime) -> ActionRules:
    return ActionRules(
        now=now,
        accept_by=now - settings.acceptance,
        expiring_before=now + settings.expiring,
        recent_since=now - settings.recent,
        waiting_statuses=(Status.RECEIVED.value, Status.QUEUED.value, Status.SENT.value),
        live_statuses=tuple(sorted(status.value for status in BEFORE_DISPENSED)),
        urgent_attention=(Status.QUERY.value, Status.DELIVERY_FAILED.value, Status.UNDELIVERABLE.value),
        recent_attention=(Status.REJECTED.value,),
    )


@dataclass(frozen=True, slots=True)
class WorklistQuery:
    """The filters a person chose (from the page's GET form) and the search (POSTed, never in a URL)."""

    provider_ods: str | None = None
    status: str | None = None
    active_from: date | None = None
    active_to: date | None = None
    search: str | None = None
    page: int = 1


@dataclass(frozen=True, slots=True)
class WorklistRow:
    prescription_id: str
    patient: str  # initials and masked NHS number: enough to recognise, not to identify
    medicines: tuple[str, ...]
    provider: str
    status: str
    status_words: str
    partial: bool
    in_status_since: datetime
    last_activity: datetime
    actions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorklistPage:
    rows: tuple[WorklistRow, ...]
    page: int
    pages: int
    total: int
    needing_action: int
    search_problem: str | None = None


_NHS_NUMBER = re.compile(r"^[0-9]{10}$")
_SHORT_FORM = re.compile(r"^[0-9A-Z]{6}-[0-9A-Z]{6}-[0-9A-Z+]{6}$")


def read_search(text: str) -> tuple[WorklistFilter | None, str | None]:
    """A search term: an NHS number (spaces allowed) or a short-form prescription ID; else why not."""
    compact = re.sub(r"[\s]", "", text).upper()
    if _NHS_NUMBER.match(compact):
        return WorklistFilter(nhs_number=compact), None
    if _SHORT_FORM.match(compact):
        return WorklistFilter(short_form_id=compact), None
    return None, "Enter a 10-digit NHS number or a prescription ID like A12B34-C56D78-E90F1X"


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def worklist(
    ctx: Context,
    *,
    caller: Caller,
    query: WorklistQuery,
    settings: ActionSettings,
    page_size: int,
    request_id: str,
) -> WorklistPage:
    """One page of the caller's worklist: prescriptions needing action first, then the rest, each part
    newest activity first."""
    db, clock = ctx.db, ctx.clock
    search, problem = read_search(query.search) if query.search else (WorklistFilter(), None)
    if search is None:
        return WorklistPage((), 1, 1, 0, 0, problem)
    chosen = WorklistFilter(
        provider_ods=query.provider_ods,
        status=query.status,
        active_from=_start_of(query.active_from) if query.active_from else None,
        active_before=_start_of(query.active_to + timedelta(days=1)) if query.active_to else None,
        short_form_id=search.short_form_id,
        nhs_number=search.nhs_number,
    )
    now = clock()
    rules = action_rules(settings, now)
    with db.snapshot() as tx:
        total = store.count_all(tx, caller, chosen)
        pages = max(1, math.ceil(total / page_size))
        page = min(max(1, query.page), pages)
        offset = (page - 1) * page_size
        needing = store.count_needing_action(tx, caller, chosen, rules)
        rows = (
            store.rows_needing_action(tx, caller, chosen, rules, offset=offset, limit=page_size)
            if offset < needing
            else []
        )
        if len(rows) < page_size:
            rows += store.other_rows(
                tx,
                caller,
                chosen,
                rules,
                offset=max(0, offset - needing),
                limit=page_size - len(rows),
            )
        shown = _present(tx, rows)
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Prescription",
        resource_id=None,
        found=True,
        request_id=request_id,
        clock=clock,
        action=Action.SEARCH,
        reason="worklist-search" if query.search else "worklist",
    )
    return WorklistPage(tuple(shown), page, pages, total, needing)


def _present(tx: Tx, rows: Sequence[store.PrescriptionRow]) -> list[WorklistRow]:
    ids = [row.prescription_id for row in rows]
    medicines: dict[str, list[str]] = {}
    for item in store.items_of(tx, ids):
        medicines.setdefault(item.prescription_id, []).append(item.medicine or "Medicine not named")
    bodies = store.message_bodies(tx, [row.message_id for row in rows])
    names = {provider.ods_code: provider.name for provider in store.provider_names(tx)}
    run_out = run_out_store.open_run_out_dates(tx, [row.prescription_id for row in rows if row.reasons])
    shown = []
    for row in rows:
        shown.append(
            WorklistRow(
                prescription_id=row.prescription_id,
                patient=f"{initials(_patient_name(bodies.get(row.message_id)))} {masked_nhs_number(row.nhs_number)}",
                medicines=tuple(medicines.get(row.prescription_id, ())),
                provider=names.get(row.provider_ods, row.provider_ods),
                status=row.status,
                status_words=status_words(row.status),
                partial=row.partial,
                in_status_since=row.status_since or row.updated_at,
                last_activity=row.updated_at,
                actions=action_words(row.reasons, run_out.get(row.prescription_id)),
            )
        )
    return shown


def _patient_name(body: bytes | None) -> str | None:
    if body is None:
        return None
    try:
        return patient_name(message_patient(orjson.loads(body)))
    except orjson.JSONDecodeError:
        return None


def providers(db: Database) -> list[store.ProviderName]:
    """Every registered provider, for the filters (names and ODS codes are not tenant data)."""
    with db.snapshot() as tx:
        return store.provider_names(tx)


def live_stamp(db: Database, *, caller: Caller, prescription_id: str | None = None) -> str:
    """Changes whenever the caller's prescriptions (or the one named) change. Not audited: it is a
    time and an id the page already holds, asked for every few seconds."""
    with db.snapshot() as tx:
        return store.latest_activity(tx, caller, prescription_id)


# --- Provider overview ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderSummary:
    ods_code: str
    name: str
    by_status: tuple[tuple[str, str, int], ...]  # (status code, words, count), lifecycle order
    total: int
    failed_deliveries_30d: int
    rejections_30d: int
    accepted_30d: int
    median_hours_to_accept: float | None
    slowest_hours_to_accept: float | None


def provider_overview(ctx: Context, *, caller: Caller, request_id: str) -> list[ProviderSummary]:
    """Per provider the caller's trust uses: prescriptions by status, the last 30 days' failed
    deliveries and rejections, and how long acceptance took."""
    db, clock = ctx.db, ctx.clock
    now = clock()
    since = now - timedelta(days=30)
    with db.snapshot() as tx:
        counts = store.status_counts(tx, caller)
        events = store.event_counts_since(
            tx, caller, statuses=(Status.DELIVERY_FAILED.value, Status.REJECTED.value), since=since
        )
        acceptances = store.acceptances_since(tx, caller, since=since)
        names = {provider.ods_code: provider.name for provider in store.provider_names(tx)}
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Prescription",
        resource_id=None,
        found=True,
        request_id=request_id,
        clock=clock,
        action=Action.SEARCH,
        reason="provider-overview",
    )
    order = {status.value: position for position, status in enumerate(STATUS_WORDS)}
    summaries = []
    for ods in sorted({c.provider_ods for c in counts}, key=lambda code: names.get(code, code)):
        mine = sorted((c for c in counts if c.provider_ods == ods), key=lambda c: order.get(c.status, 99))
        hours = sorted(
            (a.accepted_at - a.created_at).total_seconds() / 3600
            for a in acceptances
            if a.provider_ods == ods
        )
        failed = sum(
            e.count for e in events if e.provider_ods == ods and e.status == Status.DELIVERY_FAILED.value
        )
        rejected = sum(e.count for e in events if e.provider_ods == ods and e.status == Status.REJECTED.value)
        summaries.append(
            ProviderSummary(
                ods_code=ods,
                name=names.get(ods, ods),
                by_status=tuple((c.status, status_words(c.status), c.count) for c in mine),
                total=sum(c.count for c in mine),
                failed_deliveries_30d=failed,
                rejections_30d=rejected,
                accepted_30d=len(hours),
                median_hours_to_accept=statistics.median(hours) if hours else None,
                slowest_hours_to_accept=hours[-1] if hours else None,
            )
        )
    return summaries
