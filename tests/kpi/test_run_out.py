"""The run-out rule: how long a supply lasts, when the patient runs out, and whether the next
supply arrives in time (gateway.kpi.run_out)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from gateway.kpi.run_out import (
    NextSupply,
    SupplyItem,
    SupplyLength,
    assess_courses,
    assess_run_out,
    daily_dose,
    doses_per_day,
    supply_length,
)

PEN = {"value": 1, "unit": "pre-filled pen", "system": "http://snomed.info/sct", "code": "3318611000001103"}


def request(
    *,
    quantity: float | None = 2,
    dose: dict[str, Any] | None = PEN,
    timing: dict[str, Any] | None = None,
    expected: dict[str, Any] | None = None,
    course: str = "continuous",
    **instruction: Any,
) -> dict[str, Any]:
    """A MedicationRequest: by default two pens, one every two weeks, a continuous course."""
    dosage: dict[str, Any] = {
        "timing": timing or {"repeat": {"frequency": 1, "period": 2, "periodUnit": "wk"}}
    }
    if dose is not None:
        dosage["doseAndRate"] = [{"doseQuantity": dose}]
    dosage.update(instruction)
    dispense: dict[str, Any] = {}
    if quantity is not None:
        dispense["quantity"] = PEN | {"value": quantity}
    if expected is not None:
        dispense["expectedSupplyDuration"] = expected
    return {
        "resourceType": "MedicationRequest",
        "courseOfTherapyType": {"coding": [{"code": course}]},
        "dosageInstruction": [dosage],
        "dispenseRequest": dispense,
    }


def test_two_pens_one_every_two_weeks_last_28_days() -> None:
    assert supply_length(request()) == SupplyLength(28, "dosage")


def test_the_shorter_of_the_dosage_and_the_expected_supply_duration_counts() -> None:
    longer = {"value": 30, "unit": "day", "system": "http://unitsofmeasure.org", "code": "d"}
    assert supply_length(request(expected=longer)) == SupplyLength(28, "dosage")
    shorter = {"value": 3, "unit": "week", "system": "http://unitsofmeasure.org", "code": "wk"}
    assert supply_length(request(expected=shorter)) == SupplyLength(21, "expected-supply-duration")


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"dose": {"value": 40, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}},
         "dose and supply in different units"),
        ({"dose": None}, "no dose quantity"),
        ({"asNeededBoolean": True}, "taken as needed"),
        ({"timing": {"event": ["2026-02-01"]}}, "no dosing frequency"),
        ({"quantity": None}, "no dispensed quantity"),
    ],
)  # fmt: skip
def test_what_the_rule_cannot_work_out_it_says(changes: dict[str, Any], why: str) -> None:
    assert supply_length(request(**changes)) == SupplyLength(None, "unknown", why)


def test_sequential_dosing_is_not_worked_out_but_the_expected_duration_still_counts() -> None:
    loading = request(expected={"value": 28, "code": "d"})
    loading["dosageInstruction"] = [
        loading["dosageInstruction"][0] | {"sequence": 1},
        loading["dosageInstruction"][0] | {"sequence": 2},
    ]
    assert daily_dose(loading["dosageInstruction"], PEN) == (None, "sequential dosing (e.g. loading doses)")
    assert supply_length(loading) == SupplyLength(28, "expected-supply-duration")


@pytest.mark.parametrize(
    ("timing", "per_day"),
    [
        ({"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}, 2.0),
        ({"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}}, 3.0),
        ({"repeat": {"frequency": 1, "frequencyMax": 2, "period": 1, "periodUnit": "d"}}, 2.0),
        ({"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}}, 2.0),
        ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "dayOfWeek": ["mon", "thu"]}}, 2 / 7),
        ({"code": {"coding": [{"code": "TID"}]}}, 3.0),
        ({"repeat": {"frequency": 1, "period": 1, "periodUnit": "mo"}}, 1 / 30),
    ],
)
def test_doses_a_day_from_the_timing(timing: dict[str, Any], per_day: float) -> None:
    assert doses_per_day(timing) == pytest.approx(per_day)


def test_a_dose_range_is_read_at_its_top() -> None:
    ranged = request(
        dose=None, timing={"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}, quantity=28
    )
    ranged["dosageInstruction"][0]["doseAndRate"] = [{"doseRange": {"low": PEN, "high": PEN | {"value": 2}}}]
    assert supply_length(ranged) == SupplyLength(14, "dosage")


SUPPLY = SupplyLength(28, "dosage")
DELIVERED = date(2026, 2, 1)  # runs out on 1 March


def test_a_delivery_agreed_before_the_run_out_day_is_on_track() -> None:
    result = assess_run_out(
        delivered_on=DELIVERED, supply=SUPPLY, next_supply=NextSupply("delivery-scheduled", date(2026, 2, 27)),
        today=date(2026, 2, 20), continuing=True,
    )  # fmt: skip
    assert (result.run_out_on, result.at_risk, result.reason) == (date(2026, 3, 1), False, "on-track")


def test_a_delivery_agreed_for_the_run_out_day_or_later_is_at_risk() -> None:
    for agreed in (date(2026, 3, 1), date(2026, 3, 4)):
        result = assess_run_out(
            delivered_on=DELIVERED, supply=SUPPLY, next_supply=NextSupply("delivery-scheduled", agreed),
            today=date(2026, 2, 10), continuing=True,
        )  # fmt: skip
        assert (result.at_risk, result.reason) == (True, "delivery-after-run-out")


def test_an_order_with_no_delivery_date_is_at_risk_within_the_lead_time() -> None:
    def on(today: date, status: str = "accepted") -> tuple[bool, str]:
        result = assess_run_out(
            delivered_on=DELIVERED,
            supply=SUPPLY,
            next_supply=NextSupply(status),
            today=today,
            continuing=True,
        )
        return result.at_risk, result.reason

    assert on(date(2026, 2, 21)) == (False, "on-track")
    assert on(date(2026, 2, 22)) == (True, "no-delivery-date")
    assert on(date(2026, 2, 22), "delivery-failed") == (True, "no-delivery-date")
    assert on(date(2026, 2, 22), "undeliverable") == (True, "no-delivery-date")


def test_no_next_order_is_at_risk_for_a_continuing_course_only() -> None:
    for following in (None, NextSupply("rejected")):
        continuing = assess_run_out(
            delivered_on=DELIVERED,
            supply=SUPPLY,
            next_supply=following,
            today=date(2026, 2, 25),
            continuing=True,
        )
        assert (continuing.at_risk, continuing.reason) == (True, "no-next-order")
    ending = assess_run_out(
        delivered_on=DELIVERED, supply=SUPPLY, next_supply=None, today=date(2026, 2, 25), continuing=False
    )
    assert (ending.at_risk, ending.reason) == (False, "course-ends")


def test_an_unknown_supply_length_is_never_flagged() -> None:
    result = assess_run_out(
        delivered_on=DELIVERED, supply=SupplyLength(None, "unknown", "taken as needed"), next_supply=None,
        today=date(2026, 6, 1), continuing=True,
    )  # fmt: skip
    assert (result.run_out_on, result.at_risk, result.reason) == (None, False, "supply-length-unknown")


def test_each_course_is_judged_on_its_last_delivery_and_the_next_order_after_it() -> None:
    def item(course: str, number: int, status: str, **extra: Any) -> SupplyItem:
        return SupplyItem(
            course=course, item_id=f"{course}-{number}", ordered_at=datetime(2026, 1, number, tzinfo=UTC),
            status=status, medication_request=request(), **extra,
        )  # fmt: skip

    items = [
        item("a", 1, "delivered", delivered_on=date(2026, 1, 5)),
        item("a", 2, "delivered", delivered_on=DELIVERED),
        item("a", 3, "cancelled"),
        item("a", 4, "delivery-scheduled", agreed_date=date(2026, 3, 2)),
        item("b", 1, "delivered", delivered_on=DELIVERED),
        item("b", 2, "accepted"),
        item("c", 1, "accepted"),
    ]
    results = assess_courses(items, today=date(2026, 2, 10))
    assert set(results) == {"a-2", "b-1"}
    assert (results["a-2"].at_risk, results["a-2"].reason) == (True, "delivery-after-run-out")
    assert (results["b-1"].at_risk, results["b-1"].reason) == (False, "on-track")
