"""The suite's own small checks, read against published examples (not against the gateway's code)."""

from __future__ import annotations

import random

import pytest

from conformance.identifiers import (
    mod37_check_character,
    nhs_number_valid,
    short_form_id_valid,
    synthetic_nhs_number,
    synthetic_short_form_id,
    wrong_check_character,
)
from conformance.messages import MessageBuilder
from conformance.wire import redact_body, redact_headers


@pytest.mark.parametrize("value", ["DFE702-A99968-393E0N", "7DA81B-A83008-9AD8B+"])
def test_published_short_form_ids_pass(value: str) -> None:
    assert short_form_id_valid(value)
    assert not short_form_id_valid(wrong_check_character(value))


@pytest.mark.parametrize("value", ["DFE702-A99968-393E0N\n", "dfe702-a99968-393e0n", "DFE702A99968393E0N"])
def test_near_misses_of_a_short_form_id_fail(value: str) -> None:
    assert not short_form_id_valid(value)


@pytest.mark.parametrize(
    ("value", "valid"), [("9449304106", True), ("9449304107", False), ("944930410\uff16", False)]
)
def test_nhs_numbers(value: str, valid: bool) -> None:
    assert nhs_number_valid(value) is valid


def test_synthetic_identifiers_are_valid() -> None:
    rng = random.Random(7)
    for _ in range(200):
        assert nhs_number_valid(synthetic_nhs_number(rng))
        short_form = synthetic_short_form_id(rng, "A99968")
        assert short_form_id_valid(short_form) and mod37_check_character(short_form[:-1]) == short_form[-1]


def test_a_cancellation_names_its_order() -> None:
    builder = MessageBuilder("RCF", rng=random.Random(3))
    order = builder.order("VCF01", items=3)
    cancel = builder.cancellation(order, items=[1])
    requests = cancel.entries("MedicationRequest")
    assert cancel.identifier != order.identifier
    assert [r["groupIdentifier"]["value"] for r in requests] == [order.short_form_id]
    assert cancel.item_ids == [order.item_ids[1]] and requests[0]["status"] == "cancelled"


def test_redaction_keeps_the_scheme_and_drops_the_secret() -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert redact_headers({"Authorization": f"Bearer {token}"}) == {"authorization": "Bearer [redacted]"}
    form = redact_body(
        f"grant_type=client_credentials&client_assertion={token}".encode(),
        "application/x-www-form-urlencoded",
    )
    assert token not in form and "client_assertion=%5Bredacted%5D" in form
    assert (
        redact_body(f'{{"note": "{token}"}}'.encode(), "application/json")
        == '{"note": "[JWT alg=ES256 redacted]"}'
    )
