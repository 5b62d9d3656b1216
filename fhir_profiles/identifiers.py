"""NHS identifiers: NHS numbers (Modulus 11), short-form prescription IDs (ISO 7064 MOD 37-2), ODS codes.

Each check is a pure function over the whole value, in ASCII only: `[0-9]` and `[A-Z]`, never
Python's `\\d` or `str.isdigit()` (which take Arabic-Indic, fullwidth or Devanagari digits) nor `$`
(which lets a trailing newline through), so one patient or prescription has one spelling. The
generators make valid identifiers for the message builder, tests, benchmarks and simulators.
"""

from __future__ import annotations

import random
import re

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
PRESCRIPTION_ORDER_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/prescription-order-number"
PRESCRIPTION_LONG_FORM_SYSTEM = "https://fhir.nhs.uk/Id/prescription"
ORDER_ITEM_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/prescription-order-item-number"

# EPS uses "+" where ISO 7064 uses "*" for the 37th character.
_MOD37_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+"
# Matched with fullmatch: the whole value, never a prefix of it.
_SHORT_FORM_RE = re.compile(r"[0-9A-F]{6}-[0-9A-Z]{6}-[0-9A-F]{5}[0-9A-Z+]")
_NHS_NUMBER_RE = re.compile(r"[0-9]{10}")
_ODS_RE = re.compile(r"[A-Z0-9]{3,12}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A line item identifier: EPS sends a UUID; any FHIR-id-like ASCII token of up to 64 is taken.
_ITEM_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,63}")


def nhs_number_check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit for nine digits, or None when no valid number can end them."""
    total = sum(int(digit) * (10 - position) for position, digit in enumerate(first_nine))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid_nhs_number(value: str) -> bool:
    if not _NHS_NUMBER_RE.fullmatch(value):
        return False
    return nhs_number_check_digit(value[:9]) == int(value[9])


def is_nhs_number_shaped(value: str) -> bool:
    return bool(_NHS_NUMBER_RE.fullmatch(value))


def mod37_check_character(payload: str) -> str:
    """ISO 7064 MOD 37-2 check character over the characters of `payload` (dashes ignored)."""
    total = 0
    for character in payload.replace("-", ""):
        total = ((total + _MOD37_ALPHABET.index(character)) * 2) % 37
    return _MOD37_ALPHABET[(38 - total) % 37]


def is_short_form_id_shaped(value: str) -> bool:
    return bool(_SHORT_FORM_RE.fullmatch(value))


def is_valid_short_form_id(value: str) -> bool:
    """Shape `XXXXXX-XXXXXX-XXXXXC` and a correct MOD 37-2 check character."""
    if not is_short_form_id_shaped(value):
        return False
    return mod37_check_character(value[:-1]) == value[-1]


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.fullmatch(value))


def is_ods_code(value: str) -> bool:
    return bool(_ODS_RE.fullmatch(value))


def is_item_identifier(value: str) -> bool:
    """A line item identifier (`prescription-order-item-number`): 1-64 ASCII letters, digits, `.`, `-`."""
    return bool(_ITEM_IDENTIFIER_RE.fullmatch(value))


def generate_nhs_number(rng: random.Random) -> str:
    """A random NHS number that passes Modulus 11 (test ranges start with 9)."""
    while True:
        first_nine = "9" + "".join(str(rng.randrange(10)) for _ in range(8))
        check = nhs_number_check_digit(first_nine)
        if check is not None:
            return first_nine + str(check)


def generate_short_form_id(prescriber_ods: str, rng: random.Random) -> str:
    """A short-form prescription ID for a prescriber site, as EPS systems build them."""
    random_part = "".join(rng.choice("0123456789ABCDEF") for _ in range(6))
    ods_part = prescriber_ods.upper().rjust(6, "0")[:6]
    sequence = "".join(rng.choice("0123456789ABCDEF") for _ in range(5))
    body = f"{random_part}-{ods_part}-{sequence}"
    return body + mod37_check_character(body)
