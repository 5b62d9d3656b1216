"""The suite's own reading of NHS identifiers: short-form prescription IDs (ISO 7064 MOD 37-2) and
NHS numbers (Modulus 11). Written from the published rules, not shared with the gateway, so that a
bug in one is not a bug in both."""

from __future__ import annotations

import random
import re

MOD37_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+"
SHORT_FORM_PATTERN = re.compile(r"[0-9A-F]{6}-[0-9A-Z]{6}-[0-9A-F]{5}[0-9A-Z+]")
NHS_NUMBER_PATTERN = re.compile(r"[0-9]{10}")
ODS_PATTERN = re.compile(r"[0-9A-Z]{3,6}")
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def mod37_check_character(body: str) -> str:
    """The ISO 7064 MOD 37-2 check character of `body` (dashes are not part of the sum)."""
    total = 0
    for character in body.replace("-", ""):
        total = ((total + MOD37_ALPHABET.index(character)) * 2) % 37
    return MOD37_ALPHABET[(38 - total) % 37]


def short_form_id_valid(value: str) -> bool:
    # fullmatch on an ASCII-only pattern: no other Unicode digits, no trailing newline.
    if not SHORT_FORM_PATTERN.fullmatch(value):
        return False
    return mod37_check_character(value[:-1]) == value[-1]


def nhs_number_check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit of nine digits; None when the remainder makes no valid number."""
    total = sum(int(digit) * weight for digit, weight in zip(first_nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def nhs_number_valid(value: str) -> bool:
    if not NHS_NUMBER_PATTERN.fullmatch(value):
        return False
    return nhs_number_check_digit(value[:9]) == int(value[9])


def synthetic_nhs_number(rng: random.Random) -> str:
    """A valid number in the 999 range, which NHS England keeps for test data."""
    while True:
        first_nine = "999" + "".join(rng.choice("0123456789") for _ in range(6))
        check = nhs_number_check_digit(first_nine)
        if check is not None:
            return first_nine + str(check)


def synthetic_short_form_id(rng: random.Random, prescriber_ods: str) -> str:
    """`XXXXXX-XXXXXX-XXXXXC`: random hex, the prescriber's ODS code padded to six, random hex, check."""
    body = (
        "".join(rng.choice("0123456789ABCDEF") for _ in range(6))
        + "-"
        + prescriber_ods.rjust(6, "0")[:6]
        + "-"
        + "".join(rng.choice("0123456789ABCDEF") for _ in range(5))
    )
    return body + mod37_check_character(body)


def wrong_check_character(short_form_id: str) -> str:
    """The same ID with a check character that cannot be right."""
    right = short_form_id[-1]
    wrong = MOD37_ALPHABET[(MOD37_ALPHABET.index(right) + 1) % 37]
    return short_form_id[:-1] + wrong


def wrong_nhs_check_digit(nhs_number: str) -> str:
    return nhs_number[:9] + str((int(nhs_number[9]) + 1) % 10)
