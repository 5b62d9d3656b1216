"""Raising run-out warnings: the rule of `gateway.kpi.run_out` applied to the courses in the
database, every `HOMECARE_RUN_OUT_CHECK_SECONDS` beside the API (gateway.runner).

Each round looks at the patients something happened to since the last round (an event in the log:
a new order, a delivery, a date agreed...) and at those with a course due a look today (a quiet
course comes within the lead days of running out on a day known in advance; one at risk is looked
at daily). It reads every line item of those patients, groups them into courses (one patient's one
medicine at one trust) and assesses each; a course whose last delivery is older than `LOOKBACK`
(400 days, longer than any supply lasts) is over. The first round reads the whole log once. A
course newly at risk gets, in one transaction:
- a warning row (`run_out_alert`), once per course and supply: it is never raised again for the
  same delivered supply, however many rounds find it still at risk;
- an event in the status log on the order it flags (the next order of the course, else the
  delivered supply): status `run-out-risk`, recorded by the gateway, with the run-out date and the
  reason in its detail. It is not a status change: the item keeps its status and the KPIs skip it;
- the listener is told (subscriptions get a notification: gateway.notify.service.notify_run_out).
The worklist flags the order while the warning is open. A warning closes when its course is no
longer at risk (the next supply delivered or booked in time, the course ended).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson

from gateway.domain.tasks import render_task
from gateway.kpi.measures import fhir_date
from gateway.kpi.months import local_date
from gateway.kpi.run_out import (
    LEAD_DAYS,
    NextSupply,
    RunOutAssessment,
    SupplyItem,
    assess_run_out,
    current_and_next,
    is_continuing,
    supply_length,
)
from gateway.logs import get_logger
from gateway.store import events, items
from gateway.store import run_out as store
from gateway.store.db import Database, Tx
from gateway.store.items import ItemKey

log = get_logger("gateway.run_out")

RUN_OUT_RISK = "run-out-risk"
GATEWAY_SOURCE = "gateway"
LOOKBACK = timedelta(days=400)
RUN_OUT_URL = "https://homecare-gateway.nhs.uk/StructureDefinition/Extension-RunOutRisk"
# An event id below the newest may still be committed this long after it was recorded: read again.
GRACE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class RunOutWarning:
    """A warning as raised: the order it flags, its Task as it is now (with the warning on it)."""

    tenant_ods: str
    provider_ods: str
    prescription_id: str
    item_id: str
    run_out_on: date
    reason: str
    task: dict[str, Any]


RunOutListener = Callable[[Tx, RunOutWarning, datetime], None]


@dataclass(frozen=True, slots=True)
class WatchResult:
    raised: int
    cleared: int
    at_risk: int


@dataclass(frozen=True, slots=True)
class _Course:
    key: str
    items: list[SupplyItem]
    rows: dict[str, store.SupplyRow]


def course_key(tenant_ods: str, nhs_number: str, medicine: str) -> str:
    """An opaque key of one patient's one medicine at one trust (a digest: no patient data in it)."""
    return hashlib.sha256(f"{tenant_ods}|{nhs_number}|{medicine}".encode()).hexdigest()


def _medicine(resource: dict[str, Any], fallback: str | None) -> str:
    concept = resource.get("medicationCodeableConcept")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            return f"{coding.get('system')}|{coding['code']}"
    return (fallback or "").strip().lower()


def _agreed(row: store.SupplyRow) -> date | None:
    window = row.delivery_window or {}
    value = window.get("end") or window.get("start")
    agreed = fhir_date(value) if isinstance(value, str) else None
    if agreed is None or row.scheduled_at is None:
        return agreed
    return max(agreed, local_date(row.scheduled_at))


def _courses(rows: list[store.SupplyRow]) -> list[_Course]:
    grouped: dict[str, _Course] = {}
    for row in rows:
        try:
            resource = orjson.loads(row.resource)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(resource, dict):
            continue
        key = course_key(row.tenant_ods, row.nhs_number, _medicine(resource, row.medicine))
        course = grouped.setdefault(key, _Course(key, [], {}))
        course.rows[row.item_id] = row
        course.items.append(
            SupplyItem(
                course=key,
                item_id=row.item_id,
                ordered_at=row.ordered_at,
                status=row.status,
                medication_request=resource,
                delivered_on=local_date(row.delivered_at) if row.delivered_at else None,
                agreed_date=_agreed(row),
            )
        )
    return list(grouped.values())


@dataclass(frozen=True, slots=True)
class _Assessed:
    course: str
    supply: store.SupplyRow  # the current supply, or any item of a course with none delivered
    flagged: store.SupplyRow
    assessment: RunOutAssessment | None  # None: nothing delivered, or the course is over
    due: date | None  # when to look again if nothing happens

    @property
    def at_risk(self) -> bool:
        return (
            self.assessment is not None and self.assessment.at_risk and self.assessment.run_out_on is not None
        )


def _assess(courses: list[_Course], *, today: date, lead_days: int, lookback: timedelta) -> list[_Assessed]:
    found = []
    for course in courses:
        current, following = current_and_next(course.items)
        if current is None or current.delivered_on is None or current.delivered_on < today - lookback:
            any_item = course.rows[course.items[0].item_id]
            found.append(_Assessed(course.key, any_item, any_item, None, None))
            continue
        assessment = assess_run_out(
            delivered_on=current.delivered_on,
            supply=supply_length(current.medication_request),
            next_supply=None if following is None else _next(following),
            today=today,
            continuing=is_continuing(current.medication_request),
            lead_days=lead_days,
        )
        flagged = following if following is not None else current
        found.append(
            _Assessed(
                course.key,
                course.rows[current.item_id],
                course.rows[flagged.item_id],
                assessment,
                _due(assessment, today=today, lead_days=lead_days),
            )
        )
    return found


def _due(assessment: RunOutAssessment, *, today: date, lead_days: int) -> date | None:
    """At risk: look again tomorrow. Waiting for a next order or a delivery date: on the day the run-out
    comes within the lead days. Otherwise only when something happens."""
    tomorrow = today + timedelta(days=1)
    if assessment.at_risk:
        return tomorrow
    if assessment.run_out_on is None or assessment.reason not in ("no-next-order", "on-track"):
        return None
    return max(tomorrow, assessment.run_out_on - timedelta(days=lead_days))


def _next(item: SupplyItem) -> NextSupply:
    return NextSupply(item.status, item.agreed_date)


def check_run_out(
    db: Database,
    *,
    now: datetime,
    listener: RunOutListener | None,
    lead_days: int = LEAD_DAYS,
    lookback: timedelta = LOOKBACK,
    grace: timedelta = GRACE,
) -> WatchResult:
    """One round: raise a warning for each course newly at risk, close those no longer at risk."""
    today = local_date(now)
    with db.snapshot() as tx:
        position = store.watch_position(tx)
        news = store.new_events(tx, position, settled_before=now - grace)
        patients = store.patients_of(tx, news.prescription_ids) | store.patients_due(tx, today)
        rows = store.supplies_of_patients(tx, patients)
    assessed = _assess(_courses(rows), today=today, lead_days=lead_days, lookback=lookback)
    at_risk = [a for a in assessed if a.at_risk]
    still = {(risk.course, risk.supply.item_id) for risk in at_risk}
    raised = 0
    with db.transaction() as tx:
        stale = [
            alert.id
            for alert in store.open_alerts(tx, [a.course for a in assessed])
            if (alert.course, alert.supply_item_id) not in still
        ]
        store.clear_alerts(tx, stale, now=now)
        for risk in at_risk:
            if _raise(tx, risk, now=now, listener=listener):
                raised += 1
        store.set_due(tx, {a.course: (a.supply.item_id, a.due) for a in assessed})
        store.set_watch_position(tx, max(position, news.settled_id), now=now)
    if raised or stale:
        log.info("run_out_checked", raised=raised, cleared=len(stale), at_risk=len(at_risk))
    return WatchResult(raised, len(stale), len(at_risk))


def _raise(tx: Tx, risk: _Assessed, *, now: datetime, listener: RunOutListener | None) -> bool:
    flagged, assessment = risk.flagged, risk.assessment
    assert assessment is not None and assessment.run_out_on is not None
    added = store.add_alert(
        tx,
        course=risk.course,
        supply_item_id=risk.supply.item_id,
        prescription_id=flagged.prescription_id,
        item_id=flagged.item_id,
        tenant_ods=flagged.tenant_ods,
        provider_ods=flagged.provider_ods,
        run_out_on=assessment.run_out_on,
        reason=assessment.reason,
        now=now,
    )
    if not added:
        return False
    detail = {
        "run_out_on": assessment.run_out_on.isoformat(),
        "reason": assessment.reason,
        "supply_days": assessment.supply.days,
        "supply_basis": assessment.supply.basis,
        "supply_item_id": risk.supply.item_id,
    }
    events.append(
        tx,
        [
            events.NewEvent(
                flagged.prescription_id, flagged.item_id, RUN_OUT_RISK, now, now, GATEWAY_SOURCE, detail
            )
        ],
    )
    store.touch_prescription(tx, flagged.prescription_id, now=now)
    if listener is not None:
        view = items.find(tx, ItemKey.by_id(flagged.item_id))
        if view is not None:
            task = render_task(view, detail=events.latest_detail(tx, flagged.item_id, verdict="applied"))
            task.setdefault("extension", []).append(warning_extension(assessment))
            listener(
                tx,
                RunOutWarning(
                    flagged.tenant_ods,
                    flagged.provider_ods,
                    flagged.prescription_id,
                    flagged.item_id,
                    assessment.run_out_on,
                    assessment.reason,
                    task,
                ),
                now,
            )
    return True


def warning_extension(assessment: RunOutAssessment) -> dict[str, Any]:
    """The warning as carried on the Task of a notification."""
    assert assessment.run_out_on is not None
    return {
        "url": RUN_OUT_URL,
        "extension": [
            {"url": "runOutOn", "valueDate": assessment.run_out_on.isoformat()},
            {"url": "reason", "valueCode": assessment.reason},
        ],
    }
