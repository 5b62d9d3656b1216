"""The demo gives the clinician pages work at once: its first sample orders are ones the simulated
providers will query and fail to deliver (the simulators' plans are seeded, so this is known)."""

from __future__ import annotations

from adapters.fhir_rest.simulator_config import SimulatorConfig
from gateway.demo import _path, _samples


def test_the_demo_samples_include_a_query_and_a_failed_delivery() -> None:
    configs = {
        "VNCEL": SimulatorConfig(ods="VNCEL", seed=2026),
        "VNFKT": SimulatorConfig(
            ods="VNFKT", seed=2026, delivery_failure_rate=0.4, max_delivery_attempts=1, query_rate=0.3
        ),
    }
    samples = _samples(5, configs, ["VNHLS", "VNCEL"])
    assert len(samples) == 5
    paths = [_path(message, configs[ods]) for ods, message in samples[:2]]
    assert "query" in paths[0] and "delivery-failed" in paths[1]
    assert [ods for ods, _ in samples[2:]] == ["VNHLS", "VNCEL", "VNHLS"], (
        "the rest spread over every provider"
    )
    assert _samples(0, configs, ["VNCEL"]) == []


def test_a_query_stays_open_as_long_as_the_simulator_is_told() -> None:
    from adapters.simulation.lifecycle import plan_lifecycle

    config = SimulatorConfig(seed=1, query_rate=1.0, query_answer_seconds=900.0, step_delay_seconds=2.0)
    steps = plan_lifecycle(config, "AAAAAA-A99968-AAAAAA", ("item-1",))
    after_query = steps[[step.status for step in steps].index("query") + 1]
    assert (after_query.status, after_query.delay_seconds) == ("accepted", 900.0)
