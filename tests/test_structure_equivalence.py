"""The strict fast models against fhir.resources R4B: never more lenient, the same verdict elsewhere.

Hypothesis mutates valid messages one element at a time (removes it, gives it another JSON type,
empties it, adds an unknown sibling). Whatever the mutation:
- if the gateway's structural check passes, fhir.resources R4B accepts the Bundle too;
- if fhir.resources rejects it, the gateway reports at least one issue;
- if fhir.resources accepts it, the gateway does too, unless the mutation broke a JSON type that
  fhir.resources coerces (a number sent as a string, say), which the gateway refuses on purpose.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fhir_profiles import strict_models
from fhir_profiles.builder import PrescriptionMessageBuilder
from fhir_profiles.structure import check_bundle_structure
from tests.support import FIXTURES

Path = tuple[str | int, ...]


def _paths(node: Any, prefix: Path = ()) -> list[Path]:
    found: list[Path] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*prefix, index))
            found.extend(_paths(value, (*prefix, index)))
    return found


def _r4b_accepts(document: dict[str, Any]) -> bool:
    try:
        R4BBundle.model_validate(document)
    except Exception:  # fhir.resources raises assorted errors on bad input: all mean "refused"
        return False
    return True


def _strict_errors(document: dict[str, Any]) -> list[str]:
    try:
        strict_models.Bundle.model_validate(document)
    except ValidationError as exc:
        return [error["type"] for error in exc.errors()]
    return []


def _strict_accepts(document: dict[str, Any]) -> bool:
    return not _strict_errors(document)


MUTATIONS = [
    "delete",
    "int",
    "string",
    "bool",
    "list",
    "object",
    "null",
    "empty-string",
    "bad-date",
    "unknown-sibling",
]
# fhir.resources coerces these JSON types, and lets some primitives be empty; the gateway refuses
# them, as FHIR JSON does (values are typed, and an empty value is left out, not sent as "").
COERCED = {"int", "string", "bool", "empty-string"}


def _mutate(document: dict[str, Any], path: Path, mutation: str) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    parent: Any = mutated
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if mutation == "delete":
        del parent[key]
    elif mutation == "unknown-sibling":
        if isinstance(parent, dict):
            parent["notAnElement"] = "x"
        else:
            parent.append({"notAnElement": "x"})
    else:
        parent[key] = {
            "int": 7,
            "string": "7",
            "bool": True,
            "list": ["x"],
            "object": {"x": 1},
            "null": None,
            "empty-string": "",
            "bad-date": "2026-13-45",
        }[mutation]
    return mutated


# fhir.resources does not apply FHIR's base64Binary format; the gateway does.
BASE64_ELEMENTS = {"data", "hash"}


def _emptied(document: dict[str, Any], path: Path) -> bool:
    parent: Any = document
    for part in path[:-1]:
        parent = parent[part]
    return parent == []


def _base_messages() -> list[dict[str, Any]]:
    builder = PrescriptionMessageBuilder(seed=21)
    return [builder.build(items=1), builder.build(items=3)]


BASES = _base_messages()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_strict_models_are_never_more_lenient_than_fhir_resources(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(BASES))
    path = data.draw(st.sampled_from(_paths(base)))
    mutation = data.draw(st.sampled_from(MUTATIONS))
    if path[:1] == ("resourceType",) or (len(path) > 1 and path[-1] == "resourceType"):
        mutation = "delete" if mutation == "unknown-sibling" else mutation
    mutated = _mutate(base, path, mutation)

    r4b_ok = _r4b_accepts(mutated)
    gateway_issues = check_bundle_structure(mutated)
    if _strict_accepts(mutated):
        assert r4b_ok, f"strict models accepted what FHIR R4B refuses: {path} {mutation}"
    if not gateway_issues:
        assert r4b_ok, f"gateway accepted what FHIR R4B refuses: {path} {mutation}"
    if not r4b_ok:
        assert gateway_issues, f"FHIR R4B refuses but the gateway saw nothing: {path} {mutation}"
    # FHIR JSON requires resourceType; fhir.resources' Bundle class does not ask for it at the top.
    # Codes of required bindings are checked here, not by fhir.resources (literal_error).
    # FHIR JSON has no nulls (one inside an array needs a matching `_element` array), and the array
    # of a 1..* element may not be empty: both are refused here, not always by fhir.resources.
    deliberate = (
        mutation in COERCED
        or path == ("resourceType",)
        or mutation == "null"
        or path[-1] in BASE64_ELEMENTS
        or set(_strict_errors(mutated)) == {"literal_error"}
        or (mutation == "delete" and isinstance(path[-1], int) and _emptied(mutated, path))
    )
    if r4b_ok and not deliberate:
        assert not gateway_issues, f"gateway refused valid FHIR: {path} {mutation}: {gateway_issues}"


def test_valid_messages_pass_both() -> None:
    for message in BASES:
        assert _r4b_accepts(message)
        assert _strict_accepts(message)
        assert check_bundle_structure(message) == []


def test_eps_fixture_bundles_get_the_same_structural_verdict() -> None:
    folder = FIXTURES / "eps"
    if not folder.is_dir():
        pytest.skip(f"shared EPS fixtures not present at {folder}")
    import orjson

    checked = 0
    for path in sorted(folder.glob("*.json")):
        document = orjson.loads(path.read_bytes())
        if document.get("resourceType") != "Bundle":
            continue
        assert (check_bundle_structure(document) == []) == _r4b_accepts(document), path.name
        checked += 1
    assert checked >= 20
