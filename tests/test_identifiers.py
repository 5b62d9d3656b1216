"""NHS numbers (Modulus 11) and short-form prescription IDs (ISO 7064 MOD 37-2)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_profiles.identifiers import (
    generate_nhs_number,
    generate_short_form_id,
    is_valid_nhs_number,
    is_valid_short_form_id,
    mod37_check_character,
    nhs_number_check_digit,
)


@pytest.mark.parametrize("number", ["9449304106", "9453740519", "9000000009", "4010232137"])
def test_known_valid_nhs_numbers_pass(number: str) -> None:
    assert is_valid_nhs_number(number)


@pytest.mark.parametrize("number", ["9449304107", "1234567890", "944930410", "94493041066", "94493O4106", ""])
def test_wrong_check_digit_or_shape_fails(number: str) -> None:
    assert not is_valid_nhs_number(number)


@given(st.integers(min_value=0, max_value=2**32))
def test_generated_nhs_numbers_pass_and_any_single_digit_change_fails(seed: int) -> None:
    number = generate_nhs_number(random.Random(seed))
    assert is_valid_nhs_number(number)
    position = seed % 10
    changed = number[:position] + str((int(number[position]) + 1) % 10) + number[position + 1 :]
    assert not is_valid_nhs_number(changed)


@pytest.mark.parametrize(
    "prescription_id",
    ["A0548B-A99968-451485", "1A7D94-0RRERP-549310", "9A80DD-A99968-4CCC8W", "83C40E-A23856-00123W"],
)
def test_eps_prescription_ids_have_valid_check_characters(prescription_id: str) -> None:
    assert is_valid_short_form_id(prescription_id)


@pytest.mark.parametrize(
    "prescription_id",
    [
        "269CA9-A99968-4577BP",
        "A0548B-A99968-451486",
        "A0548B-A99968-45148",
        "A0548BA99968451485",
        "a0548b-a99968-451485",
    ],
)
def test_bad_check_character_or_shape_fails(prescription_id: str) -> None:
    assert not is_valid_short_form_id(prescription_id)


def test_check_character_uses_plus_for_the_37th_value() -> None:
    # Find a body whose check value is 36: EPS writes it as "+".
    rng = random.Random(3)
    for _ in range(10_000):
        candidate = generate_short_form_id("A99968", rng)
        if candidate.endswith("+"):
            assert is_valid_short_form_id(candidate)
            return
    pytest.fail("no ID with a '+' check character in 10,000 tries")


@given(st.integers(min_value=0, max_value=2**32), st.sampled_from("0123456789ABCDEF"))
def test_generated_ids_pass_and_a_changed_character_fails(seed: int, replacement: str) -> None:
    prescription_id = generate_short_form_id("A99968", random.Random(seed))
    assert is_valid_short_form_id(prescription_id)
    assert mod37_check_character(prescription_id[:-1]) == prescription_id[-1]
    if prescription_id[0] != replacement:
        assert not is_valid_short_form_id(replacement + prescription_id[1:])


def test_a_check_digit_of_eleven_is_written_zero() -> None:
    assert nhs_number_check_digit("900000013") == 0
    assert is_valid_nhs_number("9000000130")
    assert not is_valid_nhs_number("9000000131")


def test_a_short_ods_code_is_padded_with_zeros_in_a_generated_prescription_id() -> None:
    prescription_id = generate_short_form_id("RBA", random.Random(3))
    assert prescription_id.split("-")[1] == "000RBA"
    assert is_valid_short_form_id(prescription_id)


def test_a_long_ods_code_is_cut_to_six_characters_in_a_generated_prescription_id() -> None:
    prescription_id = generate_short_form_id("FH123456", random.Random(3))
    assert prescription_id.split("-")[1] == "FH1234"
    assert is_valid_short_form_id(prescription_id)
