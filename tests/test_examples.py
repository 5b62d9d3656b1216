"""The example requests in examples/ say what they claim: accepted, or refused for their reason."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fhir_profiles.homecare import validate_message
from fhir_profiles.outcome import status_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["prescription-order.json", "prescription-order-4-items.json"])
def test_accepted_examples_are_valid(name: str) -> None:
    raw = (EXAMPLES / name).read_bytes()
    assert validate_message(orjson.loads(raw), raw).issues == []


@pytest.mark.parametrize(
    ("name", "status", "codes"),
    [
        ("refused-bad-nhs-number.json", 400, {"INVALID_CHECK_DIGIT"}),
        ("refused-not-homecare.json", 422, {"NOT_HOMECARE_PRESCRIPTION"}),
        ("refused-several-problems.json", 400, {"INVALID_VALUE", "MISSING_FIELD"}),
    ],
)
def test_refused_examples_fail_for_their_reason(name: str, status: int, codes: set[str]) -> None:
    raw = (EXAMPLES / name).read_bytes()
    issues = validate_message(orjson.loads(raw), raw).issues
    assert status_for(issues) == status
    assert {issue.detail.value for issue in issues} == codes
