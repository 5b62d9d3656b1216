"""Each measure on a hand-built event history with a known answer (gateway.kpi.measures)."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.kpi.definitions import MeasureId
from gateway.kpi.measures import all_figures, percentile, prescription_figures, restatements
from gateway.store.kpi import EventRecord, Figures, MonthKey
from tests.kpi.history import History, at, window

M = MeasureId


def cell(histories: list[History], measure: MeasureId, month: str) -> Figures:
    """The figures of one measure and month, over every provider and trust."""
    total = Figures()
    for key, figures in all_figures(h.events for h in histories).items():
        if key.measure == measure and key.month == month:
            total.add(figures)
    return total


def months_of(histories: list[History], measure: MeasureId) -> set[str]:
    return {key.month for key in all_figures(h.events for h in histories) if key.measure == measure}


# On-time delivery


def test_delivered_on_the_agreed_date_is_on_time_and_a_day_late_is_not() -> None:
    on_time = History("p1").order(at("2026-02-01 09:00"))
    on_time.delivered_path(
        "i1", at("2026-02-02 09:00"), window_end="2026-02-10", delivered=at("2026-02-10 17:00")
    )
    late = History("p2").order(at("2026-02-01 09:00"))
    late.delivered_path(
        "i2", at("2026-02-02 09:00"), window_end="2026-02-10", delivered=at("2026-02-11 08:00")
    )
    figures = cell([on_time, late], M.ON_TIME_DELIVERY, "2026-02")
    assert (figures.numerator, figures.denominator) == (1, 2)


def test_a_delivery_counts_in_the_month_its_agreed_date_falls_in() -> None:
    history = History().order(at("2026-02-20 09:00"))
    history.delivered_path(
        "i1", at("2026-02-26 09:00"), window_end="2026-03-02", delivered=at("2026-03-02 12:00")
    )
    assert months_of([history], M.ON_TIME_DELIVERY) == {"2026-03"}
    assert cell([history], M.ON_TIME_DELIVERY, "2026-03").numerator == 1


def test_a_window_with_a_time_is_read_as_its_uk_date() -> None:
    # 23:30 UTC on 30 June is 00:30 on 1 July in London (summer time): due in July.
    history = History().order(at("2026-06-20 09:00"))
    history.delivered_path(
        "i1", at("2026-06-25 09:00"), window_end="2026-06-30T23:30:00+00:00", delivered=at("2026-06-30 23:45")
    )
    assert months_of([history], M.ON_TIME_DELIVERY) == {"2026-07"}


def test_a_reschedule_reported_before_the_agreed_date_moves_it() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-10"))
    # The same status again with a new window: the gateway keeps it as a duplicate; here it is a reschedule.
    history.report(
        "i1", "delivery-scheduled", at("2026-02-09 15:00"), verdict="duplicate", **window("2026-02-12")
    )
    history.report("i1", "delivered", at("2026-02-12 10:00"))
    figures = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert (figures.numerator, figures.denominator) == (1, 1)


def test_a_reschedule_reported_after_the_agreed_date_passed_leaves_the_delivery_late() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-10"))
    history.report(
        "i1", "delivery-scheduled", at("2026-02-11 09:00"), verdict="duplicate", **window("2026-02-13")
    )
    history.report("i1", "delivered", at("2026-02-13 10:00"))
    figures = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert (figures.numerator, figures.denominator) == (0, 1)


def test_a_failed_attempt_rearranged_on_the_day_is_due_on_the_new_date() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-10"))
    history.report("i1", "out-for-delivery", at("2026-02-10 08:00"))
    history.report("i1", "delivery-failed", at("2026-02-10 12:00"), responsible_party="courier")
    history.report("i1", "delivery-scheduled", at("2026-02-10 13:00"), **window("2026-02-11"))
    history.report("i1", "delivered", at("2026-02-11 10:00"))
    figures = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert (figures.numerator, figures.denominator) == (1, 1)
    failed = cell([history], M.FAILED_DELIVERIES, "2026-02")
    assert (failed.numerator, failed.denominator) == (1, 2)


def test_a_delivery_without_an_agreed_date_is_counted_apart_not_in_the_rate() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivered", at("2026-02-03 10:00"))
    figures = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert (figures.numerator, figures.denominator) == (0, 0)
    assert figures.strata == {"supplement": {"delivered-without-agreed-date": 1}}


def test_an_item_cancelled_before_its_delivery_was_arranged_is_never_due() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "cancel-requested", at("2026-02-02 09:00"), source="trust:RBA")
    history.report("i1", "cancelled", at("2026-02-02 10:00"))
    assert months_of([history], M.ON_TIME_DELIVERY) == set()
    cancelled = cell([history], M.CANCELLATION_SUCCESS, "2026-02")
    assert (cancelled.numerator, cancelled.denominator) == (1, 1)


def test_a_cancellation_that_happened_before_the_due_date_takes_the_item_out_even_when_reported_after() -> (
    None
):
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-03 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-03 11:00"), **window("2026-02-10"))
    # Recorded later, but it happened first: the delivery never was, for the item's status and the KPIs.
    history.report(
        "i1", "cancel-requested", at("2026-02-02 09:00"), recorded=at("2026-02-04 09:00"), source="trust:RBA"
    )
    history.report("i1", "cancelled", at("2026-02-02 10:00"), recorded=at("2026-02-04 10:00"))
    assert months_of([history], M.ON_TIME_DELIVERY) == set()
    assert cell([history], M.CANCELLATION_SUCCESS, "2026-02").numerator == 1


# Failed deliveries


def test_failed_deliveries_per_attempt_by_cause_and_by_who_caused_them() -> None:
    first = History("p1").order(at("2026-02-01 09:00"))
    first.report("i1", "accepted", at("2026-02-01 10:00"))
    first.report("i1", "dispensed", at("2026-02-02 10:00"))
    first.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-05"))
    first.report(
        "i1", "delivery-failed", at("2026-02-05 12:00"),
        reason={"code": "patient-not-home", "text": None}, responsible_party="patient",
    )  # fmt: skip
    first.report("i1", "out-for-delivery", at("2026-02-06 08:00"))
    first.report(
        "i1", "delivery-failed", at("2026-02-06 12:00"),
        reason={"code": "vehicle-breakdown", "text": None}, responsible_party="courier",
    )  # fmt: skip
    first.report("i1", "out-for-delivery", at("2026-02-07 08:00"))
    first.report("i1", "delivered", at("2026-02-07 12:00"))
    second = History("p2").order(at("2026-02-01 09:00"))
    second.report("i2", "accepted", at("2026-02-01 10:00"))
    second.report("i2", "dispensed", at("2026-02-02 10:00"))
    second.report("i2", "out-for-delivery", at("2026-02-03 08:00"))
    second.report("i2", "delivery-failed", at("2026-02-03 12:00"))
    figures = cell([first, second], M.FAILED_DELIVERIES, "2026-02")
    assert (figures.numerator, figures.denominator) == (3, 4)
    assert figures.strata == {
        "cause": {"patient-not-home": 1, "vehicle-breakdown": 1, "unspecified": 1},
        "responsible-party": {"patient": 1, "courier": 1, "unspecified": 1},
    }


# Time to acceptance


def test_time_to_acceptance_median_and_90th_percentile_by_nearest_rank() -> None:
    intake = at("2026-02-01 09:00")
    history = History().order(intake, items=5)
    for item, minutes in (("i1", 30), ("i2", 60), ("i3", 90), ("i4", 600), ("i5", -5)):
        history.report(item, "accepted", intake + timedelta(minutes=minutes))
    figures = cell([history], M.TIME_TO_ACCEPTANCE, "2026-02")
    # A report timed before intake (the provider's clock) counts as 0 minutes.
    assert figures.distribution == {0: 1, 30: 1, 60: 1, 90: 1, 600: 1}
    assert figures.numerator == 5
    assert percentile(figures.distribution, 1, 2) == 60  # rank 3 of 5
    assert percentile(figures.distribution, 9, 10) == 600  # rank 5 of 5


def test_only_the_first_acceptance_counts_in_the_month_it_happened() -> None:
    history = History().order(at("2026-01-31 22:00"))
    history.report("i1", "accepted", at("2026-02-01 02:00"))
    history.report("i1", "query", at("2026-02-01 03:00"))
    history.report("i1", "accepted", at("2026-02-01 05:00"), source="trust:RBA")
    assert cell([history], M.TIME_TO_ACCEPTANCE, "2026-02").distribution == {240: 1}
    assert months_of([history], M.TIME_TO_ACCEPTANCE) == {"2026-02"}


def test_nearest_rank_percentiles_of_a_small_distribution() -> None:
    assert percentile({10: 1, 20: 1, 30: 1, 40: 1}, 1, 2) == 20
    assert percentile({10: 1, 20: 1, 30: 1, 40: 1}, 9, 10) == 40
    assert percentile({5: 9, 500: 1}, 9, 10) == 5
    assert percentile({}, 1, 2) is None


# Rejections


def test_rejection_rate_counts_decisions_with_reasons_and_refusals_at_sending() -> None:
    decided = History("p1").order(at("2026-02-01 09:00"), items=2)
    decided.report("i1", "accepted", at("2026-02-01 10:00"))
    decided.report("i2", "rejected", at("2026-02-01 11:00"), reason={"code": "out-of-stock", "text": None})
    refused = History("p2").order(at("2026-02-02 09:00"), items=2, sent_after=None)
    refused.gateway(
        "rejected", at("2026-02-02 09:01"), provider="VNCEL", reason="Invalid bundle", code="invalid"
    )
    figures = cell([decided, refused], M.REJECTION_RATE, "2026-02")
    assert (figures.numerator, figures.denominator) == (3, 4)
    assert figures.strata == {"reason": {"out-of-stock": 1, "invalid": 2}}


def test_the_gateways_own_steps_count_the_same_recorded_per_item() -> None:
    # As the status authority records the order's journey: each item moved by the gateway, no verdict.
    history = History().order(at("2026-02-02 09:00"), items=2, sent_after=None)
    for item in ("i1", "i2"):
        history.direct(item, "undeliverable", at("2026-02-02 12:00"), source="gateway", attempts=12)
        history.direct(item, "queued", at("2026-02-03 09:00"), source="gateway", redriven=True)
        history.direct(item, "sent", at("2026-02-03 09:01"), source="gateway")
    history.direct("i1", "rejected", at("2026-02-03 09:02"), source="gateway", code="invalid")
    history.report("i2", "accepted", at("2026-02-03 10:00"))
    rejections = cell([history], M.REJECTION_RATE, "2026-02")
    assert (rejections.numerator, rejections.denominator) == (1, 2)
    assert rejections.strata == {"reason": {"invalid": 1}}
    assert cell([history], M.UNDELIVERABLE_ORDERS, "2026-02").numerator == 1
    assert cell([history], M.QUERY_RATE, "2026-02").denominator == 2


def test_an_order_accepted_then_declined_is_two_decisions_one_rejection() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "rejected", at("2026-02-03 10:00"))
    figures = cell([history], M.REJECTION_RATE, "2026-02")
    assert (figures.numerator, figures.denominator) == (1, 2)
    assert figures.strata == {"reason": {"unspecified": 1}}


# Queries


def test_query_rate_per_item_sent_and_time_to_answer() -> None:
    history = History().order(at("2026-02-01 09:00"), items=2)
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "query", at("2026-02-02 10:00"), note="Dose?")
    history.report("i1", "accepted", at("2026-02-02 12:30"), source="trust:RBA", query_answered="m1")
    history.report("i2", "query", at("2026-02-03 09:00"))
    history.report("i2", "rejected", at("2026-02-03 21:00"))
    rate = cell([history], M.QUERY_RATE, "2026-02")
    assert (rate.numerator, rate.denominator) == (2, 2)
    answered = cell([history], M.QUERY_TIME_TO_ANSWER, "2026-02")
    assert answered.distribution == {150: 1, 720: 1}


def test_an_open_query_is_not_timed_until_it_ends() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "query", at("2026-02-27 10:00"))
    assert months_of([history], M.QUERY_TIME_TO_ANSWER) == set()
    history.report("i1", "sent", at("2026-03-01 10:00"), source="trust:RBA")  # the answer: back where it was
    assert cell([history], M.QUERY_TIME_TO_ANSWER, "2026-03").distribution == {2 * 24 * 60: 1}


# Cancellations


def test_cancellation_success_over_answered_requests_and_early_cancellations_apart() -> None:
    history = History().order(at("2026-02-01 09:00"), items=3)
    for item in ("i1", "i2"):
        history.report(item, "accepted", at("2026-02-01 10:00"))
        history.report(item, "cancel-requested", at("2026-02-02 09:00"), source="trust:RBA")
    history.report("i1", "cancelled", at("2026-02-02 09:05"), cancellation_answer="agreed")
    history.report("i2", "accepted", at("2026-02-02 09:05"), cancellation_answer="refused")
    waiting = History("p2").order(at("2026-02-01 09:00"), sent_after=None)
    waiting.direct("i9", "cancelled", at("2026-02-01 09:30"))
    figures = cell([history, waiting], M.CANCELLATION_SUCCESS, "2026-02")
    assert (figures.numerator, figures.denominator) == (1, 2)
    assert figures.strata == {"supplement": {"cancelled-before-sending": 1}}


def test_a_cancellation_still_waiting_for_the_provider_is_not_counted() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "cancel-requested", at("2026-02-02 09:00"), source="trust:RBA")
    assert months_of([history], M.CANCELLATION_SUCCESS) == set()


# Undeliverable and expired


def test_each_time_the_gateway_gives_up_an_order_counts() -> None:
    history = History().order(at("2026-02-01 09:00"), sent_after=None)
    history.gateway("undeliverable", at("2026-02-02 09:00"), attempts=12)
    history.gateway("queued", at("2026-02-03 09:00"), redriven=True)
    history.gateway("undeliverable", at("2026-02-05 09:00"), attempts=12)
    history.gateway("queued", at("2026-03-01 09:00"), redriven=True)
    history.gateway("undeliverable", at("2026-03-02 09:00"), attempts=12)
    assert cell([history], M.UNDELIVERABLE_ORDERS, "2026-02").numerator == 2
    assert cell([history], M.UNDELIVERABLE_ORDERS, "2026-03").numerator == 1


def test_a_prescription_expired_unfilled_counts_once_in_the_month_of_its_first_expiry() -> None:
    history = History().order(at("2026-01-10 09:00"), items=2)
    history.report("i1", "accepted", at("2026-01-10 10:00"))
    history.report("i1", "expired", at("2026-02-28 23:59"), source="gateway")
    history.report("i2", "expired", at("2026-03-01 00:01"), source="gateway")
    assert cell([history], M.EXPIRED_UNFILLED, "2026-02").numerator == 1
    assert months_of([history], M.EXPIRED_UNFILLED) == {"2026-02"}


# Duplicates, stale reports, arrival order


def test_a_repeated_report_counts_once() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.delivered_path(
        "i1", at("2026-02-02 09:00"), window_end="2026-02-10", delivered=at("2026-02-09 10:00")
    )
    history.report("i1", "delivered", at("2026-02-09 10:00"), verdict="duplicate")
    history.report("i1", "accepted", at("2026-02-02 09:00"), verdict="duplicate")
    assert (cell([history], M.FAILED_DELIVERIES, "2026-02").denominator) == 1
    assert cell([history], M.ON_TIME_DELIVERY, "2026-02").denominator == 1
    assert cell([history], M.REJECTION_RATE, "2026-02").denominator == 1


def test_a_stale_report_counts_where_it_happened() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-10"))
    history.report(
        "i1", "delivery-scheduled", at("2026-02-10 14:00"), verdict="duplicate", **window("2026-02-11")
    )
    history.report("i1", "delivered", at("2026-02-11 10:00"))
    # Older than the delivery already applied from the same provider: kept as superseded. It fills
    # its place in the history: a failed attempt, and the new window a rearrangement on the day.
    history.report(
        "i1", "delivery-failed", at("2026-02-10 12:00"), verdict="superseded", responsible_party="patient"
    )
    failed = cell([history], M.FAILED_DELIVERIES, "2026-02")
    assert (failed.numerator, failed.denominator) == (1, 2)
    on_time = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert (on_time.numerator, on_time.denominator) == (1, 1)


def _renumbered(events: list[EventRecord], order: list[int]) -> list[EventRecord]:
    """The same events arriving in another order: ids follow the arrival."""
    arrived = [events[index] for index in order]
    return [
        EventRecord(number + 1, *(getattr(e, f) for f in EventRecord.__slots__[1:]))  # type: ignore[arg-type]
        for number, e in enumerate(arrived)
    ]


@given(st.randoms(use_true_random=False))
def test_the_order_reports_arrive_in_does_not_change_the_figures(rng: random.Random) -> None:
    history = History().order(at("2026-02-01 09:00"), items=2)
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "query", at("2026-02-01 11:00"))
    history.report("i1", "accepted", at("2026-02-01 12:00"), source="trust:RBA")
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-10"))
    history.report("i1", "delivery-failed", at("2026-02-10 12:00"), responsible_party="patient")
    history.report("i1", "delivery-scheduled", at("2026-02-10 14:00"), **window("2026-02-11"))
    history.report("i1", "delivered", at("2026-02-11 10:00"))
    history.report("i2", "rejected", at("2026-02-01 13:00"))
    steps, reports = history.events[:3], history.events[3:]
    order = list(range(len(reports)))
    rng.shuffle(order)
    shuffled = steps + _renumbered(reports, order)
    assert prescription_figures(shuffled) == prescription_figures(history.events)


# Restatement


def test_an_event_recorded_after_its_month_closed_restates_the_month_and_says_when() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.delivered_path(
        "i1", at("2026-02-02 09:00"), window_end="2026-02-27", delivered=at("2026-02-26 10:00")
    )
    before = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert restatements(history.events, close_days=5) == {}
    # February closes at the end of 5 March (5 days after it ends): a failure reported on 10 March restates it.
    history.events.pop()
    history.report("i1", "delivery-failed", at("2026-02-27 12:00"), recorded=at("2026-03-10 08:00"))
    assert restatements(history.events, close_days=5) == {
        MonthKey("VNCEL", "RBA", "2026-02"): at("2026-03-10 08:00")
    }
    after = cell([history], M.ON_TIME_DELIVERY, "2026-02")
    assert (before.numerator, after.numerator) == (1, 0)


def test_an_event_recorded_before_the_month_closed_restates_nothing() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-28 23:00"), recorded=at("2026-03-04 23:00"))
    assert restatements(history.events, close_days=5) == {}
    assert restatements(history.events, close_days=0) == {
        MonthKey("VNCEL", "RBA", "2026-02"): at("2026-03-04 23:00")
    }


def test_a_late_duplicate_restates_nothing() -> None:
    history = History().order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-02 09:00"))
    history.report(
        "i1", "accepted", at("2026-02-02 09:00"), recorded=at("2026-04-01 09:00"), verdict="duplicate"
    )
    assert restatements(history.events, close_days=5) == {}


def test_a_late_agreed_delivery_restates_the_month_of_its_date_too() -> None:
    history = History().order(at("2026-01-20 09:00"))
    history.report("i1", "accepted", at("2026-01-20 10:00"))
    history.report("i1", "dispensed", at("2026-01-25 10:00"))
    history.report(
        "i1",
        "delivery-scheduled",
        at("2026-01-30 10:00"),
        recorded=at("2026-03-20 10:00"),
        **window("2026-02-03"),
    )
    assert set(restatements(history.events, close_days=5)) == {
        MonthKey("VNCEL", "RBA", "2026-01"),
        MonthKey("VNCEL", "RBA", "2026-02"),
    }


def test_figures_are_kept_per_provider_and_trust() -> None:
    one = History("p1", provider="VNCEL", trust="RBA").order(at("2026-02-01 09:00"))
    two = History("p2", provider="VNFKT", trust="RBB").order(at("2026-02-01 09:00"))
    keys = {(k.provider_ods, k.tenant_ods) for k in all_figures([one.events, two.events])}
    assert keys == {("VNCEL", "RBA"), ("VNFKT", "RBB")}
