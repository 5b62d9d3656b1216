"""Fixtures for the adapter tests: a provider simulator on a real port and orders to send it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.fhir_rest.simulator import SimulatorServer
from fhir_profiles.builder import PrescriptionMessageBuilder


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def provider() -> Iterator[SimulatorServer]:
    """The simulated provider VNCEL, with a fast lifecycle."""
    with SimulatorServer(ods="VNCEL", seed=1, step_delay_seconds=0.01) as server:
        yield server


@pytest.fixture
def builder() -> PrescriptionMessageBuilder:
    return PrescriptionMessageBuilder(seed=20, performer_ods="VNCEL")
