"""The monthly aggregate in the database on both backends: folded in as events arrive, it holds
exactly what a recompute from the whole log (or of one month) gives."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.clock import system_clock
from gateway.kpi import service
from gateway.kpi.measures import all_figures
from gateway.store.db import Database
from gateway.store.kpi import EventHead
from gateway.store.providers import add_provider
from tests.kpi.history import History, at, window
from tests.kpi.storage import (
    PROVIDERS,
    arrival_order,
    kpi_tables,
    put_events,
    put_prescriptions,
    random_history,
)
from tests.support import wipe

LATER = datetime(2027, 1, 1, tzinfo=UTC)


def fresh(database: Database) -> Database:
    wipe(database)
    with database.write() as session:
        for ods in PROVIDERS:
            add_provider(
                session, ods_code=ods, name=ods, adapter="fhir-rest", settings={}, now=system_clock()
            )
    return database


def fold(db: Database, **options: object) -> service.FoldResult:
    return service.fold_new_events(db, now=LATER, close_days=5, **options)  # type: ignore[arg-type]


@given(
    seed=st.integers(0, 2**32),
    cuts=st.lists(st.floats(0, 1), max_size=6),
    batch=st.sampled_from((3, 50, 2000)),
)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_folding_events_as_they_arrive_equals_recomputing_from_the_log(
    database: Database, seed: int, cuts: list[float], batch: int
) -> None:
    db = fresh(database)
    rng = random.Random(seed)
    histories = [random_history(rng, number) for number in range(12)]
    put_prescriptions(db, histories)
    events = arrival_order(histories)
    bounds = sorted({0, len(events), *(int(cut * len(events)) for cut in cuts)})
    for start, end in itertools.pairwise(bounds):
        put_events(db, events[start:end])
        fold(db, batch=batch)
    folded = kpi_tables(db)

    service.recompute_all(db, now=LATER, close_days=5)
    assert kpi_tables(db) == folded
    months = {key[0] for key in folded[0]} | {key[0] for key in folded[1]}
    for month in sorted(months):
        service.recompute_month(db, month, now=LATER, close_days=5)
    assert kpi_tables(db) == folded


def test_the_database_figures_are_the_pure_computation(database: Database) -> None:
    db = fresh(database)
    rng = random.Random(7)
    histories = [random_history(rng, number) for number in range(30)]
    put_prescriptions(db, histories)
    put_events(db, arrival_order(histories))
    fold(db)
    cells, _ = kpi_tables(db)
    expected = service.with_national(all_figures(h.events for h in histories))
    assert any(key.tenant_ods == "*" for key in expected)
    assert {(k.month, k.provider_ods, k.tenant_ods, k.measure) for k in expected} == set(cells)
    for key, figures in expected.items():
        numerator, denominator, _, distribution = cells[
            (key.month, key.provider_ods, key.tenant_ods, key.measure)
        ]
        assert (numerator, denominator) == (figures.numerator, figures.denominator)
        assert {int(m): n for m, n in distribution.items()} == figures.distribution


def test_a_late_event_changes_its_month_and_marks_it_restated(database: Database) -> None:
    db = fresh(database)
    history = History("p1").order(at("2026-02-01 09:00"))
    history.report("i1", "accepted", at("2026-02-01 10:00"))
    history.report("i1", "dispensed", at("2026-02-02 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-02-02 11:00"), **window("2026-02-20"))
    put_prescriptions(db, [history])
    put_events(db, history.events)
    fold(db)
    cells, notes = kpi_tables(db)
    assert cells[("2026-02", "VNCEL", "RBA", "on-time-delivery")][:2] == (0, 1)
    assert notes == {}

    late = History("p1", events=[]).report(
        "i1", "delivered", at("2026-02-19 15:00"), recorded=at("2026-03-12 09:30")
    )
    put_events(db, late.events)
    assert fold(db).events == 1
    cells, notes = kpi_tables(db)
    assert cells[("2026-02", "VNCEL", "RBA", "on-time-delivery")][:2] == (1, 1)
    assert notes == {
        ("2026-02", "VNCEL", "RBA"): at("2026-03-12 09:30"),
        ("2026-02", "VNCEL", "*"): at("2026-03-12 09:30"),
    }


def test_folding_twice_changes_nothing_and_concurrent_folds_count_each_event_once(database: Database) -> None:
    db = fresh(database)
    rng = random.Random(11)
    histories = [random_history(rng, number) for number in range(40)]
    put_prescriptions(db, histories)
    put_events(db, arrival_order(histories))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fold(db, batch=25)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [], [repr(e.__cause__) for e in errors]
    while fold(db).events:  # a fold that found the lock held left the rest to the others
        pass
    folded = kpi_tables(db)
    assert fold(db).events == 0
    service.recompute_all(db, now=LATER, close_days=5)
    assert kpi_tables(db) == folded


def test_the_fold_waits_for_a_missing_id_then_moves_past_it() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    heads = [EventHead(11, "p", now), EventHead(13, "p", now), EventHead(14, "p", now)]
    # 12 may belong to a transaction still open: stop before it...
    assert service._horizon(10, heads, now=now, grace=timedelta(seconds=60)) == 11
    # ...until the event after it is older than the grace: then 12 was rolled back.
    assert service._horizon(10, heads, now=now + timedelta(seconds=61), grace=timedelta(seconds=60)) == 14
    # The very first fold starts at the first event, wherever the ids start.
    assert service._horizon(0, heads, now=now, grace=timedelta(seconds=60)) == 11


def test_recomputing_a_month_reads_deliveries_agreed_before_it(database: Database) -> None:
    db = fresh(database)
    history = History("p1").order(at("2026-01-05 09:00"))
    history.report("i1", "accepted", at("2026-01-05 10:00"))
    history.report("i1", "dispensed", at("2026-01-06 10:00"))
    history.report("i1", "delivery-scheduled", at("2026-01-06 11:00"), **window("2026-02-20"))
    summer = History("p2").order(at("2026-06-05 09:00"))
    summer.report("i2", "accepted", at("2026-06-05 10:00"))
    summer.report("i2", "dispensed", at("2026-06-06 10:00"))
    # Written as 30 June, but 23:30 UTC is 00:30 on 1 July in London: due in July.
    summer.report("i2", "delivery-scheduled", at("2026-06-06 11:00"), **window("2026-06-30T23:30:00+00:00"))
    put_prescriptions(db, [history, summer])
    put_events(db, history.events + summer.events)
    fold(db)
    folded = kpi_tables(db)
    assert folded[0][("2026-02", "VNCEL", "RBA", "on-time-delivery")][:2] == (0, 1)
    assert folded[0][("2026-07", "VNCEL", "RBA", "on-time-delivery")][:2] == (0, 1)
    assert service.recompute_month(db, "2026-02", now=LATER, close_days=5) == 1
    assert service.recompute_month(db, "2026-07", now=LATER, close_days=5) == 1
    assert kpi_tables(db) == folded


@pytest.mark.parametrize("month", ["2026-13", "26-01", "2026-1"])
def test_a_month_is_written_yyyy_mm(month: str) -> None:
    from gateway.kpi.months import MonthError, parse_month

    with pytest.raises(MonthError):
        parse_month(month)
