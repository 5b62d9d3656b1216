"""The demo gives the clinician pages work at once: its first sample orders are ones the simulated
providers will query, fail to deliver, and deliver as a weekly supply with no next order (a run-out
warning); the simulators' plans are seeded, so this is known."""

from __future__ import annotations

from datetime import date

from adapters.fhir_rest.simulator_config import SimulatorConfig
from gateway.demo import _path, _samples
from gateway.kpi.run_out import assess_run_out, is_continuing, supply_length


def test_the_demo_samples_include_a_query_a_failed_delivery_and_a_run_out() -> None:
    configs = {
        "VNCEL": SimulatorConfig(ods="VNCEL", seed=2026),
        "VNFKT": SimulatorConfig(
            ods="VNFKT", seed=2026, delivery_failure_rate=0.4, max_delivery_attempts=1, query_rate=0.3
        ),
    }
    samples = _samples(6, configs, ["VNHLS", "VNCEL"])
    assert len(samples) == 6
    paths = [_path(message, configs[ods]) for ods, message in samples[:3]]
    assert "query" in paths[0] and "delivery-failed" in paths[1]
    assert "delivered" in paths[2] and not paths[2] & {"query", "delivery-failed", "rejected"}
    weekly = next(
        e["resource"] for e in samples[2][1]["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    today = date(2026, 11, 30)
    risk = assess_run_out(
        delivered_on=today,
        supply=supply_length(weekly),
        next_supply=None,
        today=today,
        continuing=is_continuing(weekly),
    )
    assert (risk.at_risk, risk.reason, risk.run_out_on) == (True, "no-next-order", date(2026, 12, 7))
    assert [ods for ods, _ in samples[3:]] == ["VNHLS", "VNCEL", "VNHLS"], (
        "the rest spread over every provider"
    )
    assert _samples(0, configs, ["VNCEL"]) == []


def test_a_query_stays_open_as_long_as_the_simulator_is_told() -> None:
    from adapters.simulation.lifecycle import plan_lifecycle

    config = SimulatorConfig(seed=1, query_rate=1.0, query_answer_seconds=900.0, step_delay_seconds=2.0)
    steps = plan_lifecycle(config, "AAAAAA-A99968-AAAAAA", ("item-1",))
    after_query = steps[[step.status for step in steps].index("query") + 1]
    assert (after_query.status, after_query.delay_seconds) == ("accepted", 900.0)
