"""Structural validation of a FHIR R4 Bundle: strict and fast first, fhir.resources R4B where needed.

The strict models in `strict_models` decide almost every message in well under a millisecond. When
they meet something outside their coverage (an element or resource type they do not model), that
entry is validated with fhir.resources R4B, which is the authority on FHIR structure. Errors the
strict models find inside their coverage (a missing required element, a wrong JSON type, a malformed
date) stand on their own: they are FHIR errors whatever else the message holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource as R4BResource
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from fhir_profiles import strict_decoder, strict_models
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError

_COVERAGE_GAPS = frozenset({"extra_forbidden", "union_tag_invalid"})
_COVERED_ENTRY_KEYS = frozenset({"fullUrl", "link", "id", "extension", "modifierExtension", "resource"})
_STRICT_TYPE_ERRORS = frozenset(
    {
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "int_from_float",
        "int_parsing",
        "float_parsing",
        "bool_parsing",
        "is_instance_of",
    }
)


@lru_cache(maxsize=256)
def r4b_resource_class(resource_type: str) -> type[R4BResource] | None:
    """The fhir.resources R4B class of a resource type, or None when FHIR R4 has no such resource."""
    try:
        model = get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        return None
    if isinstance(model, type) and issubclass(model, R4BResource):
        return model
    return None


def fhirpath(loc: Sequence[int | str], root: str = "Bundle") -> str:
    """Turn a pydantic error location into a FHIRPath such as `Bundle.entry[3].resource.subject`."""
    path = root
    previous: int | str | None = None
    for part in loc:
        # pydantic adds steps FHIRPath does not have: validator names and union tags.
        skip = isinstance(part, str) and (
            part == "root"
            or part.startswith(("function-", "list["))
            or (previous == "resource" and part in strict_models.COVERED_RESOURCE_TYPES)
        )
        if isinstance(part, int):
            path += f"[{part}]"
        elif not skip:
            path += f".{part}"
        previous = part
    return path


def issue_from_error(error: ErrorDetails, prefix: tuple[int | str, ...] = (), root: str = "Bundle") -> Issue:
    kind = error["type"]
    expression = fhirpath(prefix + tuple(error["loc"]), root)
    element = expression.rsplit(".", 1)[-1]
    if kind in {"missing", "model_field_validation.missing", "union_tag_not_found"}:
        what = "resourceType" if kind == "union_tag_not_found" else element
        return Issue(
            IssueType.REQUIRED,
            ErrorCode.MISSING_FIELD,
            f"Required element '{what}' is missing",
            expression + (".resourceType" if kind == "union_tag_not_found" else ""),
        )
    if kind == "extra_forbidden":
        return Issue(
            IssueType.STRUCTURE,
            ErrorCode.INVALID_VALUE,
            f"Unknown element '{element}': it is not part of this FHIR R4 resource",
            expression,
        )
    if kind in _STRICT_TYPE_ERRORS or kind.endswith("_type"):
        return Issue(
            IssueType.STRUCTURE,
            ErrorCode.INVALID_VALUE,
            f"Wrong JSON type for '{element}': {_plain(error['msg'])}",
            expression,
        )
    return Issue(
        IssueType.VALUE,
        ErrorCode.INVALID_VALUE,
        f"Invalid value for '{element}': {_plain(error['msg'])}",
        expression,
    )


def _plain(message: str) -> str:
    return message.removeprefix("Value error, ").strip()


def _resource_type_issues(entries: Iterable[tuple[int, Any]]) -> tuple[list[Issue], set[int]]:
    """Entries whose resourceType is missing or not a FHIR R4 resource."""
    issues: list[Issue] = []
    unknown: set[int] = set()
    for index, entry in entries:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if "resourceType" not in resource:
            continue
        resource_type = resource["resourceType"]
        if not isinstance(resource_type, str):
            unknown.add(index)
            issues.append(
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_VALUE,
                    "resourceType must be a string naming a FHIR R4 resource type",
                    f"Bundle.entry[{index}].resource.resourceType",
                )
            )
            continue
        if (
            resource_type not in strict_models.COVERED_RESOURCE_TYPES
            and r4b_resource_class(resource_type) is None
        ):
            unknown.add(index)
            issues.append(
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_RESOURCE_TYPE,
                    f"'{resource_type[:64]}' is not a FHIR R4 resource type",
                    f"Bundle.entry[{index}].resource.resourceType",
                )
            )
    return issues, unknown


def check_bundle_structure(document: Any, raw: bytes | None = None) -> list[Issue]:
    """Every structural problem with a FHIR R4 Bundle given as parsed JSON; empty when it is sound.

    `raw`, the bytes the document was parsed from, lets a sound message be confirmed straight from
    them (`strict_decoder`, the fast path); every other verdict comes from the strict models.
    """
    if raw is not None and strict_decoder.is_sound_bundle(raw):
        return []
    if not isinstance(document, dict):
        return [
            Issue(
                IssueType.STRUCTURE,
                ErrorCode.INVALID_VALUE,
                "The body must be a JSON object holding a FHIR resource",
                None,
            )
        ]
    resource_type = document.get("resourceType")
    if resource_type is None:
        return [
            Issue(
                IssueType.REQUIRED,
                ErrorCode.MISSING_FIELD,
                "Required element 'resourceType' is missing",
                "resourceType",
            )
        ]
    if resource_type != "Bundle":
        return [
            Issue(
                IssueType.STRUCTURE,
                ErrorCode.INVALID_RESOURCE_TYPE,
                "The body must be a FHIR Bundle of type 'message'",
                "resourceType",
            )
        ]
    try:
        strict_models.Bundle.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
    else:
        return []

    raw_entries = document.get("entry")
    entries = list(enumerate(raw_entries)) if isinstance(raw_entries, list) else []
    issues, unknown_entries = _resource_type_issues(entries)
    gap_entries: set[int] = set()
    bundle_level_gap = False
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] not in _COVERAGE_GAPS:
            if not (len(loc) >= 2 and loc[0] == "entry" and loc[1] in unknown_entries):
                issues.append(issue_from_error(error))
            continue
        if len(loc) >= 3 and loc[0] == "entry" and isinstance(loc[1], int) and loc[2] == "resource":
            gap_entries.add(loc[1])
        else:
            bundle_level_gap = True

    reported = {issue.expression for issue in issues}
    for issue in _authoritative_issues(document, entries, gap_entries - unknown_entries, bundle_level_gap):
        if issue.expression not in reported:
            issues.append(issue)
    return issues


def _authoritative_issues(
    document: dict[str, Any], entries: list[tuple[int, Any]], gap_entries: set[int], bundle_level_gap: bool
) -> list[Issue]:
    """Ask fhir.resources R4B about what the strict models do not cover."""
    issues: list[Issue] = []
    for index in sorted(gap_entries):
        resource = entries[index][1]["resource"]
        resource_type = resource.get("resourceType")
        model = r4b_resource_class(resource_type) if isinstance(resource_type, str) else None
        if model is None:
            continue
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            prefix: tuple[int | str, ...] = ("entry", index, "resource")
            issues.extend(
                issue_from_error(e, prefix) for e in exc.errors(include_input=False, include_url=False)
            )
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            issues.append(
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_VALUE,
                    f"Resource could not be read as FHIR R4 {resource['resourceType']}: {type(exc).__name__}",
                    f"Bundle.entry[{index}].resource",
                )
            )
    if bundle_level_gap:
        shell = {key: value for key, value in document.items() if key != "entry"}
        try:
            r4b_resource_class("Bundle").model_validate(shell)  # type: ignore[union-attr]
        except ValidationError as exc:
            issues.extend(issue_from_error(e) for e in exc.errors(include_input=False, include_url=False))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            issues.append(
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_VALUE,
                    f"Bundle could not be read: {type(exc).__name__}",
                    "Bundle",
                )
            )
        entry_model = get_fhir_model_class("BundleEntry")
        for index, entry in entries:
            if not isinstance(entry, dict) or not set(entry) - _COVERED_ENTRY_KEYS:
                continue
            entry_shell = {key: value for key, value in entry.items() if key != "resource"}
            try:
                entry_model.model_validate(entry_shell)
            except ValidationError as exc:
                prefix = ("entry", index)
                issues.extend(
                    issue_from_error(e, prefix) for e in exc.errors(include_input=False, include_url=False)
                )
    return issues


def check_resource_structure(document: dict[str, Any]) -> list[Issue]:
    """Every structural problem fhir.resources R4B finds in one resource given as parsed JSON, with
    FHIRPaths from its type (`Subscription.channel.type`); empty when it is sound."""
    resource_type = document.get("resourceType")
    model = r4b_resource_class(resource_type) if isinstance(resource_type, str) else None
    if model is None or not isinstance(resource_type, str):
        return [
            Issue(
                IssueType.STRUCTURE,
                ErrorCode.INVALID_RESOURCE_TYPE,
                "resourceType must name a FHIR R4 resource type",
                "resourceType",
            )
        ]
    try:
        model.model_validate(document)
    except ValidationError as exc:
        return [
            issue_from_error(error, root=resource_type)
            for error in exc.errors(include_input=False, include_url=False)
        ]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return [
            Issue(
                IssueType.STRUCTURE,
                ErrorCode.INVALID_VALUE,
                f"Resource could not be read as FHIR R4 {resource_type}: {type(exc).__name__}",
                resource_type,
            )
        ]
    return []


def require_resource(document: Any, resource_type: str) -> dict[str, Any]:
    """`document` when it is a structurally sound FHIR R4 `resource_type`; otherwise a 400 that names
    every problem. Rules that read the resource afterwards can trust its JSON types."""
    if not isinstance(document, dict) or document.get("resourceType") != resource_type:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_RESOURCE_TYPE,
                    f"The body must be a FHIR {resource_type}",
                    "resourceType",
                )
            ],
        )
    issues = check_resource_structure(document)
    if issues:
        raise OperationOutcomeError(400, issues)
    return document
