"""Run-out risk: when a patient's current supply runs out, and whether the next one comes in time.

Pure rules over plain inputs (no storage); they decide, and say why, but raise nothing themselves.

The rule. The current supply is the last line item of a course (one patient's one medicine at one
trust) that was delivered. It lasts `supply_length` whole days from the delivery day:
- from the dosage, when it can be worked out: the dispensed quantity divided by the daily dose
  (dose quantity x doses per day, summed over concurrent instructions), rounded down;
- from `dispenseRequest.expectedSupplyDuration`, the prescriber's own figure;
- the shorter of the two when both are known (the earlier run-out is the safe side).
The patient runs out on the delivery day plus that many days (the first day with nothing left).
The next supply is the first item of the course ordered after it that is neither delivered nor
ended (rejected, cancelled, expired). It is at risk when:
- its delivery date is agreed (or it is out for delivery) and that date is on or after the run-out
  day: it will arrive too late;
- no delivery date is agreed yet (still with the provider, failed and not rearranged, or
  undeliverable) and the run-out day is within `lead_days` (7) of today;
- there is no next order for a continuing course and the run-out day is within `lead_days` of today.

What it cannot know: stock the patient already had, doses missed or held (a hospital stay), a dose
changed outside this prescription, use "as needed", sequential regimens (loading doses), a dose in
another unit than the supply (milligrams against pre-filled pens: the strength is in the product,
not the prescription), part deliveries, and a delivery earlier than agreed until it happens. It
counts only the last delivery, so stock left from earlier ones makes its run-out day early, never late.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

DAYS_PER_UNIT = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.0}
# HL7 timing abbreviations (GTSAbbreviation) as doses per day.
TIMING_CODES = {
    "QD": 1.0,
    "AM": 1.0,
    "PM": 1.0,
    "BID": 2.0,
    "TID": 3.0,
    "QID": 4.0,
    "Q4H": 6.0,
    "Q6H": 4.0,
    "Q8H": 3.0,
    "QOD": 0.5,
    "WK": 1 / 7,
    "MO": 1 / 30,
}
CONTINUING_COURSES = frozenset({"continuous", "continuous-repeat-dispensing"})
ENDED = frozenset({"rejected", "cancelled", "expired"})
DELIVERY_AGREED = frozenset({"delivery-scheduled", "out-for-delivery"})
LEAD_DAYS = 7


@dataclass(frozen=True, slots=True)
class SupplyLength:
    """How many whole days a supply lasts, and from what; or why that is not known."""

    days: int | None
    basis: str  # "dosage", "expected-supply-duration" or "unknown"
    why_unknown: str | None = None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def supply_length(medication_request: Mapping[str, Any]) -> SupplyLength:
    """The days a MedicationRequest's dispensed quantity lasts (see the module's rule)."""
    dispense = _dict(medication_request.get("dispenseRequest"))
    quantity = _dict(dispense.get("quantity"))
    candidates: list[tuple[int, str]] = []
    per_day, why = daily_dose(medication_request.get("dosageInstruction"), quantity)
    amount = _number(quantity.get("value"))
    if per_day is not None and amount is not None:
        candidates.append((math.floor(amount / per_day), "dosage"))
    elif amount is None:
        why = "no dispensed quantity"
    expected = duration_days(dispense.get("expectedSupplyDuration"))
    if expected is not None:
        candidates.append((math.floor(expected), "expected-supply-duration"))
    if not candidates:
        return SupplyLength(None, "unknown", why)
    days, basis = min(candidates)
    return SupplyLength(days, basis)


def duration_days(value: Any) -> float | None:
    """A FHIR Duration in days (a month is taken as 30 days); None when absent or unreadable."""
    duration = _dict(value)
    amount = _number(duration.get("value"))
    unit = duration.get("code") or duration.get("unit")
    factor = DAYS_PER_UNIT.get(unit) if isinstance(unit, str) else None
    factor = factor or {"day": 1.0, "days": 1.0, "week": 7.0, "weeks": 7.0}.get(str(unit).lower())
    if amount is None or factor is None:
        return None
    return amount * factor


def daily_dose(instructions: Any, quantity: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """Units of the dispensed quantity used a day, or None and why it cannot be worked out."""
    if not isinstance(instructions, list) or not instructions:
        return None, "no dosage instruction"
    sequences = {_dict(d).get("sequence") for d in instructions}
    if len(sequences) > 1:
        return None, "sequential dosing (e.g. loading doses)"
    total = 0.0
    for instruction in map(_dict, instructions):
        per_day, why = _instruction_per_day(instruction, quantity)
        if per_day is None:
            return None, why
        total += per_day
    return total, None


def _instruction_per_day(
    instruction: dict[str, Any], quantity: Mapping[str, Any]
) -> tuple[float | None, str | None]:
    if instruction.get("asNeededBoolean") is True or "asNeededCodeableConcept" in instruction:
        return None, "taken as needed"
    dose_and_rate = instruction.get("doseAndRate")
    first = _dict(dose_and_rate[0]) if isinstance(dose_and_rate, list) and dose_and_rate else {}
    # A range is read at its top: more used, earlier run-out (the safe side).
    dose = _dict(first.get("doseQuantity")) or _dict(_dict(first.get("doseRange")).get("high"))
    amount = _number(dose.get("value"))
    if amount is None:
        return None, "no dose quantity"
    if not same_unit(dose, quantity):
        return None, "dose and supply in different units"
    per_day = doses_per_day(_dict(instruction.get("timing")))
    if per_day is None:
        return None, "no dosing frequency"
    return amount * per_day, None


def same_unit(dose: Mapping[str, Any], quantity: Mapping[str, Any]) -> bool:
    if dose.get("code") and quantity.get("code"):
        return bool(dose.get("system") == quantity.get("system") and dose.get("code") == quantity.get("code"))
    unit, other = dose.get("unit"), quantity.get("unit")
    return isinstance(unit, str) and isinstance(other, str) and unit.strip().lower() == other.strip().lower()


def doses_per_day(timing: Mapping[str, Any]) -> float | None:
    """Administrations a day from a FHIR Timing; None when it does not say."""
    repeat = _dict(timing.get("repeat"))
    frequency = _number(repeat.get("frequencyMax")) or _number(repeat.get("frequency"))
    if frequency is None:
        times = repeat.get("timeOfDay") or repeat.get("when")
        frequency = float(len(times)) if isinstance(times, list) and times else None
        if frequency is not None and repeat.get("period") is None:
            return _on_days(repeat, frequency)
    if frequency is not None:
        period = _number(repeat.get("period")) or 1.0  # the shorter period when a range is given
        factor = DAYS_PER_UNIT.get(str(repeat.get("periodUnit") or "d"))
        if factor is None:
            return None
        return _on_days(repeat, frequency / (period * factor))
    code = next(
        (c.get("code") for c in _dict(timing.get("code")).get("coding", []) if isinstance(c, dict)), None
    )
    return TIMING_CODES.get(code) if isinstance(code, str) else None


def _on_days(repeat: Mapping[str, Any], per_day: float) -> float:
    """Only on some days of the week: the daily rate spread over the week."""
    days = repeat.get("dayOfWeek")
    if isinstance(days, list) and days:
        return per_day * len(set(days)) / 7
    return per_day


@dataclass(frozen=True, slots=True)
class NextSupply:
    """The next order of the course: its line item's status and the delivery date agreed, if any."""

    status: str
    agreed_date: date | None = None


@dataclass(frozen=True, slots=True)
class RunOutAssessment:
    run_out_on: date | None
    supply: SupplyLength
    at_risk: bool
    # on-track, delivery-after-run-out, no-delivery-date, no-next-order, course-ends,
    # supply-length-unknown
    reason: str


def assess_run_out(
    *,
    delivered_on: date,
    supply: SupplyLength,
    next_supply: NextSupply | None,
    today: date,
    continuing: bool,
    lead_days: int = LEAD_DAYS,
) -> RunOutAssessment:
    """Whether the patient runs out before the next supply arrives (see the module's rule)."""
    if supply.days is None:
        return RunOutAssessment(None, supply, False, "supply-length-unknown")
    run_out_on = delivered_on + timedelta(days=supply.days)
    soon = today + timedelta(days=lead_days) >= run_out_on
    if next_supply is None or next_supply.status in ENDED:
        if not continuing:
            return RunOutAssessment(run_out_on, supply, False, "course-ends")
        return RunOutAssessment(run_out_on, supply, soon, "no-next-order")
    if next_supply.status in DELIVERY_AGREED:
        arrives = next_supply.agreed_date or today
        late = arrives >= run_out_on
        return RunOutAssessment(run_out_on, supply, late, "delivery-after-run-out" if late else "on-track")
    return RunOutAssessment(run_out_on, supply, soon, "no-delivery-date" if soon else "on-track")


@dataclass(frozen=True, slots=True)
class SupplyItem:
    """One line item of a course as the rule needs it. `course` is an opaque key (the caller makes it
    from the trust, the patient and the medicine): no patient data is needed here."""

    course: str
    item_id: str
    ordered_at: datetime
    status: str
    medication_request: Mapping[str, Any]
    delivered_on: date | None = None
    agreed_date: date | None = None


def is_continuing(medication_request: Mapping[str, Any]) -> bool:
    """A continuous course (the trust means to keep supplying it), from `courseOfTherapyType`."""
    codings = _dict(medication_request.get("courseOfTherapyType")).get("coding", [])
    return any(isinstance(c, dict) and c.get("code") in CONTINUING_COURSES for c in codings)


def assess_courses(
    items: Iterable[SupplyItem], *, today: date, lead_days: int = LEAD_DAYS
) -> dict[str, RunOutAssessment]:
    """For each course with a delivered supply: the assessment, keyed by that supply's item id."""
    courses: dict[str, list[SupplyItem]] = defaultdict(list)
    for item in items:
        courses[item.course].append(item)
    assessments: dict[str, RunOutAssessment] = {}
    for course in courses.values():
        current, following = current_and_next(course)
        if current is None or current.delivered_on is None:
            continue
        next_supply = NextSupply(following.status, following.agreed_date) if following else None
        assessments[current.item_id] = assess_run_out(
            delivered_on=current.delivered_on,
            supply=supply_length(current.medication_request),
            next_supply=next_supply,
            today=today,
            continuing=is_continuing(current.medication_request),
            lead_days=lead_days,
        )
    return assessments


def current_and_next(course: Sequence[SupplyItem]) -> tuple[SupplyItem | None, SupplyItem | None]:
    """A course's current supply (its last delivered item) and the next order after it, if any."""
    delivered = [item for item in course if item.delivered_on is not None]
    if not delivered:
        return None, None
    current = max(delivered, key=lambda item: (item.delivered_on or date.min, item.ordered_at, item.item_id))
    pending = sorted(
        (
            item
            for item in course
            if item.ordered_at > current.ordered_at and item.delivered_on is None and item.status not in ENDED
        ),
        key=lambda item: (item.ordered_at, item.item_id),
    )
    return current, (pending[0] if pending else None)
