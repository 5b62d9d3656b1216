"""Identifiers are ASCII, whole value: other scripts' digits and a trailing newline are refused.

Python's `\\d`, `str.isdigit()` and `$` take an NHS number in Arabic-Indic digits, or with a trailing
newline; had the gateway done so, the same patient would be stored under a second spelling that no
search finds.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import orjson
import pytest

from auth.clients import ClientRegistryError, KeySource, add_client
from auth.identity import Role
from fhir_profiles.builder import PrescriptionMessageBuilder
from fhir_profiles.identifiers import (
    generate_short_form_id,
    is_item_identifier,
    is_nhs_number_shaped,
    is_ods_code,
    is_short_form_id_shaped,
    is_uuid,
    is_valid_nhs_number,
    is_valid_short_form_id,
)
from fhir_profiles.status_task import read_status_task
from gateway.clock import system_clock
from gateway.store.db import Database
from tests.support import ClientKey

NHS_NUMBER = "9449304106"
# Zero in each script whose digits str.isdigit() and \d accept.
DIGIT_ZEROS = {"arabic-indic": 0x0660, "fullwidth": 0xFF10, "devanagari": 0x0966}


def in_script(value: str, zero: int) -> str:
    return "".join(chr(zero + int(c)) if c.isascii() and c.isdigit() else c for c in value)


def fullwidth(value: str) -> str:
    """Fullwidth forms of ASCII letters and digits."""
    return "".join(chr(ord(c) - 0x21 + 0xFF01) if "!" <= c <= "~" else c for c in value)


def variants(value: str) -> dict[str, str]:
    """The spellings of `value` that must be refused."""
    spelt = {name: in_script(value, zero) for name, zero in DIGIT_ZEROS.items()}
    spelt.update({"fullwidth-letters": fullwidth(value), "trailing-newline": value + "\n"})
    return {name: text for name, text in spelt.items() if text != value}


SHORT_FORM = generate_short_form_id("A83008", random.Random(4))
UUID = "a54219b8-f741-4c47-b662-e4f8dfa49ab6"
CHECKS = [
    ("nhs-number", is_valid_nhs_number, NHS_NUMBER),
    ("nhs-number-shape", is_nhs_number_shaped, NHS_NUMBER),
    ("ods-code", is_ods_code, "RBA"),
    ("ods-code-digits", is_ods_code, "A83008"),
    ("short-form", is_valid_short_form_id, SHORT_FORM),
    ("short-form-shape", is_short_form_id_shaped, SHORT_FORM),
    ("long-form", is_uuid, UUID),
    ("item-identifier", is_item_identifier, UUID),
]


@pytest.mark.parametrize(
    ("check", "spelling"),
    [
        pytest.param(check, spelling, id=f"{name}-{variant}")
        for name, check, value in CHECKS
        for variant, spelling in variants(value).items()
    ],
)
def test_every_identifier_check_refuses_other_scripts_and_a_trailing_newline(
    check: Any, spelling: str
) -> None:
    assert not check(spelling)


@pytest.mark.parametrize(("name", "check", "value"), CHECKS, ids=[c[0] for c in CHECKS])
def test_the_ascii_spelling_passes(name: str, check: Any, value: str) -> None:
    assert check(value)


def _with_nhs_number(number: str) -> dict[str, Any]:
    message = PrescriptionMessageBuilder(seed=8).build(items=1)
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["identifier"][0]["value"] = number
    return message


@pytest.mark.parametrize("spelling", sorted(variants(NHS_NUMBER).values()), ids=sorted(variants(NHS_NUMBER)))
def test_an_order_for_an_nhs_number_in_another_spelling_is_refused(
    client: httpx.Client, db: Database, spelling: str
) -> None:
    message = _with_nhs_number(spelling)
    response = client.post(
        "/fhir/$process-message",
        content=orjson.dumps(message),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 400, response.text
    assert any(
        i.get("expression") == ["Bundle.entry[2].resource.identifier[0].value"]
        for i in response.json()["issue"]
    )


def test_an_order_whose_item_identifier_ends_in_a_newline_is_refused(
    client: httpx.Client, db: Database
) -> None:
    message = PrescriptionMessageBuilder(seed=9).build(items=1)
    message["entry"][1]["resource"]["identifier"][0]["value"] += "\n"
    response = client.post(
        "/fhir/$process-message",
        content=orjson.dumps(message),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 400, response.text
    assert ["Bundle.entry[1].resource.identifier"] in [i.get("expression") for i in response.json()["issue"]]


def _status_task(short_form: str, item: str, owner: str) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "in-progress",
        "intent": "order",
        "basedOn": [
            {
                "identifier": {
                    "system": "https://fhir.nhs.uk/Id/prescription-order-number",
                    "value": short_form,
                }
            }
        ],
        "focus": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/prescription-order-item-number", "value": item}
        },
        "businessStatus": {
            "coding": [
                {"system": "https://homecare-gateway.nhs.uk/CodeSystem/homecare-status", "code": "accepted"}
            ]
        },
        "lastModified": "2026-11-23T10:15:00Z",
        "owner": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": owner}},
    }


def test_a_status_task_reads_only_ascii_identifiers() -> None:
    report, issues = read_status_task(_status_task(SHORT_FORM, UUID, "VNCEL"))
    assert report is not None, issues
    for short_form, item, owner, where in [
        (SHORT_FORM + "\n", UUID, "VNCEL", "Task.basedOn"),
        (in_script(SHORT_FORM, 0x0660), UUID, "VNCEL", "Task.basedOn"),
        (SHORT_FORM, UUID + "\n", "VNCEL", "Task.focus.identifier"),
        (SHORT_FORM, fullwidth(UUID), "VNCEL", "Task.focus.identifier"),
        (SHORT_FORM, UUID, "VNCEL\n", "Task.owner.identifier"),
        (SHORT_FORM, UUID, fullwidth("VNCEL"), "Task.owner.identifier"),
    ]:
        report, issues = read_status_task(_status_task(short_form, item, owner))
        assert report is None
        assert where in [issue.expression for issue in issues], (short_form, item, owner)


@pytest.mark.parametrize("ods", sorted(variants("A83008").values()), ids=sorted(variants("A83008")))
def test_a_client_cannot_be_registered_for_an_ods_code_in_another_spelling(
    database: Database, ods: str
) -> None:
    key = ClientKey.generate("ES256")
    with pytest.raises(ClientRegistryError, match="ODS code"), database.write() as session:
        add_client(
            session,
            client_id="client-with-odd-ods",
            role=Role.TRUST,
            ods_code=ods,
            scopes="system/Task.rs",
            keys=KeySource(jwks=key.jwks, jwks_url=None),
            now=system_clock(),
        )


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("owner", "VNCEL\n"),
        ("requester", fullwidth("RBA")),
        ("focus:identifier", UUID + "\n"),
        ("based-on:identifier", in_script(SHORT_FORM, 0x0966)),
    ],
)
def test_a_task_search_by_an_identifier_in_another_spelling_is_refused(
    client: httpx.Client, db: Database, parameter: str, value: str
) -> None:
    response = client.get("/fhir/Task", params={parameter: value})
    assert response.status_code == 400, response.text
    assert [issue["expression"] for issue in response.json()["issue"]] == [[parameter]]


def test_a_patient_search_by_an_nhs_number_in_arabic_indic_digits_is_refused(
    client: httpx.Client, db: Database
) -> None:
    response = client.post(
        "/fhir/Task/_search",
        data={"patient:identifier": f"https://fhir.nhs.uk/Id/nhs-number|{in_script(NHS_NUMBER, 0x0660)}"},
    )
    assert response.status_code == 400, response.text
    assert client.post("/fhir/Task/_search", data={"patient:identifier": NHS_NUMBER}).status_code == 200
