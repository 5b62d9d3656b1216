"""Structure's fast path (msgspec, from the bytes) never calls sound what the strict models refuse.

Only its "sound" is used (anything else goes to the strict models), so the property that matters
is one-sided: fast path sound => strict models accept. It should also agree on sound messages, or
the fast path would be no faster.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from fhir_profiles import strict_decoder, strict_models
from fhir_profiles.structure import check_bundle_structure
from tests.support import FIXTURES
from tests.test_structure_equivalence import BASES, MUTATIONS, _mutate, _paths, _strict_accepts


def fast_path_says_sound(document: Any) -> bool:
    return strict_decoder.is_sound_bundle(orjson.dumps(document))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_fast_path_is_never_more_lenient_than_the_strict_models(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(BASES))
    path = data.draw(st.sampled_from(_paths(base)))
    mutated = _mutate(base, path, data.draw(st.sampled_from(MUTATIONS)))
    if fast_path_says_sound(mutated):
        assert _strict_accepts(mutated), f"fast path called sound what the strict models refuse: {path}"


def test_valid_messages_are_sound_on_the_fast_path() -> None:
    for message in BASES:
        assert fast_path_says_sound(message)


def test_the_eps_fixtures_get_the_same_verdict_from_their_bytes() -> None:
    folder = FIXTURES / "eps"
    if not folder.is_dir():
        pytest.skip(f"EPS fixtures not found at {folder}")
    for path in sorted(folder.glob("*.json")):
        raw = path.read_bytes()
        document = orjson.loads(raw)
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            assert check_bundle_structure(document, raw) == check_bundle_structure(document), path.name


def _with(document: dict[str, Any], change: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    change(changed)
    return changed


def _request(document: dict[str, Any]) -> dict[str, Any]:
    return next(
        e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )


EDGE_CASES = {
    # Python's `$` matches before a final newline; the strict models' pattern does not.
    "date with a trailing newline": lambda d: _request(d).__setitem__("authoredOn", "2026-01-02\n"),
    "code with a trailing newline": lambda d: _request(d)["medicationCodeableConcept"]["coding"][0].update(
        {"code": "39732311000001104\n"}
    ),
    # Python's `\s` takes U+001C-U+001F; Rust's (the strict models') does not.
    "base64 with a unit separator": lambda d: d.__setitem__("signature", _signature("AAAA\x1fAAAA")),
    "a float where an integer goes": lambda d: _request(d)["dispenseRequest"].__setitem__(
        "numberOfRepeatsAllowed", 1.0
    ),
    "a boolean where a number goes": lambda d: _request(d)["dispenseRequest"]["quantity"].__setitem__(
        "value", True
    ),
    "an explicit null": lambda d: _request(d).__setitem__("priority", None),
    "two medication choices": lambda d: _request(d).__setitem__("medicationReference", {"reference": "x"}),
    "no medication": lambda d: _request(d).pop("medicationCodeableConcept"),
    "an unknown resource type": lambda d: d["entry"].append({"resource": {"resourceType": "Basic"}}),
    "no resource type": lambda d: d["entry"].append({"resource": {"id": "x"}}),
    "two extension values": lambda d: d.setdefault("meta", {}).__setitem__(
        "extension", [{"url": "http://x", "valueString": "a", "valueCode": "b"}]
    ),
}


def _signature(data: str) -> dict[str, Any]:
    return {
        "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
        "when": "2026-01-02T10:00:00+00:00",
        "who": {"reference": "urn:uuid:x"},
        "data": data,
    }


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_where_python_and_the_strict_models_could_differ_the_fast_path_refuses(case: str) -> None:
    document = _with(BASES[0], EDGE_CASES[case])
    assert not _strict_accepts(document), case
    assert not fast_path_says_sound(document), case


def test_a_signature_in_plain_base64_is_sound_on_both() -> None:
    document = _with(BASES[0], lambda d: d.__setitem__("signature", _signature("AAAA AAAA\nAAAA")))
    assert _strict_accepts(document)
    assert fast_path_says_sound(document)


_LONG_RUN = "QUJD" * 720  # a signature's length: one unbroken run of 2,880 characters


@pytest.mark.parametrize(
    "value",
    [
        _LONG_RUN,
        _LONG_RUN + "A",  # not a whole number of groups of four
        _LONG_RUN[:-1] + "!",  # a character outside the alphabet at the end of a long run
        _LONG_RUN[:-1] + "é",  # not ASCII
        "AAAA",
        "A=A=",
        "",
        "AAA",
        " AAAA\n",
        "AAAA AAAA\nAAAA",
        "AA AA",  # whitespace inside a group
        "AAAA\x1fAAAA",  # a separator Python's str.split() takes for whitespace; the strict models do not
        "AAAA\u3000AAAA",  # ideographic space: whitespace to both
    ],
)
def test_the_fast_base64_check_agrees_with_the_strict_models(value: str) -> None:
    try:
        TypeAdapter(strict_models.Base64).validate_python(value)
        strict = True
    except ValidationError:
        strict = False
    assert strict_decoder.is_base64(value) is strict
    signed = _with(BASES[0], lambda d: d.__setitem__("signature", _signature(value)))
    assert fast_path_says_sound(signed) is strict
