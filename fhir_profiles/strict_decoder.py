"""The strict models as msgspec Structs, decoded straight from the request bytes: structure's fast path.

The Structs are derived from `strict_models` at import (fields, cardinalities, JSON types, required
code bindings, primitive formats and choice elements), and wherever the two could differ the
Structs are the stricter. So only the verdict "sound" is taken from here: a message that fails to
decode is not refused for it, `structure.check_bundle_structure` asks the strict models, whose
errors (every one, with its location) are the answer. A sound homecare order decodes here in about
a fifth of the time the pydantic models take to validate its parsed JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import itemgetter
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo

from fhir_profiles import strict_models

# Rust's `\s` (pydantic's regex engine): Unicode White_Space. Python's `\s` also takes U+001C-U+001F.
_WHITESPACE = "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_BASE64_PATTERN = get_args(strict_models.Base64)[1].pattern
# Python's regular expressions backtrack: the Base64 pattern, written so that no input can make it
# try one whitespace split after another (the same language as the strict models' pattern).
_BASE64_REGEX = re.compile(rf"^{_WHITESPACE}*(?:[0-9a-zA-Z+/=]{{4}}{_WHITESPACE}*)+\Z")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def is_base64(value: str) -> bool:
    """The strict models' Base64: groups of four alphabet characters, whitespace only between groups.

    A signature is kilobytes of one unbroken run, where the regular expression (a group repeated
    hundreds of times) costs more than the rest of the message's checks together: that case is
    decided by a byte table instead (only alphabet characters, a whole number of groups, at least
    one); anything else (whitespace, another character) by the regular expression."""
    if value.isascii():
        raw = value.encode("ascii")
        if not raw.translate(None, _BASE64_ALPHABET):
            return len(raw) > 0 and len(raw) % 4 == 0
    return _BASE64_REGEX.match(value) is not None


# The choice elements each strict model checks in its model validator: (element, names, required).
_CHOICES: dict[str, tuple[tuple[str, frozenset[str], bool], ...]] = {
    "Annotation": (("author", frozenset({"authorReference", "authorString"}), False),),
    "TimingRepeat": (("bounds", frozenset({"boundsDuration", "boundsRange", "boundsPeriod"}), False),),
    "DoseAndRate": (
        ("dose", frozenset({"doseRange", "doseQuantity"}), False),
        ("rate", frozenset({"rateRatio", "rateRange", "rateQuantity"}), False),
    ),
    "Dosage": (("asNeeded", frozenset({"asNeededBoolean", "asNeededCodeableConcept"}), False),),
    "Extension": (("value", strict_models._EXTENSION_VALUES, False),),
    "MessageHeader": (("event", frozenset({"eventCoding", "eventUri"}), True),),
    "Substitution": (("allowed", frozenset({"allowedBoolean", "allowedCodeableConcept"}), True),),
    "MedicationRequest": (
        ("reported", frozenset({"reportedBoolean", "reportedReference"}), False),
        ("medication", frozenset({"medicationCodeableConcept", "medicationReference"}), True),
    ),
    "Patient": (
        ("deceased", frozenset({"deceasedBoolean", "deceasedDateTime"}), False),
        ("multipleBirth", frozenset({"multipleBirthBoolean", "multipleBirthInteger"}), False),
    ),
    "Provenance": (("occurred", frozenset({"occurredPeriod", "occurredDateTime"}), False),),
    "CommunicationPayload": (
        ("content", frozenset({"contentString", "contentAttachment", "contentReference"}), True),
    ),
    "CommunicationRequest": (("occurrence", frozenset({"occurrenceDateTime", "occurrencePeriod"}), False),),
}


def _patterned(constraints: StringConstraints) -> bool:
    """Whether msgspec checks the constraints' pattern (Base64 is checked by `is_base64`, after decoding)."""
    return constraints.pattern is not None and str(constraints.pattern) != _BASE64_PATTERN


def _is_base64_type(annotation: Any, metadata: list[Any]) -> bool:
    """Whether a strict-model field's type is (an optional or a list of) Base64."""
    for item in metadata:
        if isinstance(item, FieldInfo) and _is_base64_type(Any, list(item.metadata)):
            return True
        if isinstance(item, StringConstraints) and str(item.pattern) == _BASE64_PATTERN:
            return True
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _is_base64_type(inner, extra)
    if origin in (list, Union, UnionType):
        return any(_is_base64_type(option, []) for option in get_args(annotation))
    return False


def _python_pattern(pattern: str) -> str:
    """The strict models' (Rust) pattern as a Python one that accepts no more than it does."""
    # `[^\s]` and `\S` are stricter in Python (its `\s` is wider); a bare `\s` would be laxer.
    if not (pattern.startswith("^") and pattern.endswith("$")) or "\\s" in pattern.replace("[^\\s]", ""):
        raise RuntimeError(f"strict_decoder needs a Python form of the pattern {pattern!r}")
    # Python's `$` also matches before a final newline; `\Z` does not.
    return pattern[:-1] + r"\Z"


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_constraints(item.metadata))
        elif isinstance(item, StringConstraints):
            found.update(
                {
                    key: value
                    for key, value in (
                        ("min_length", item.min_length),
                        ("max_length", item.max_length),
                        ("pattern", _python_pattern(str(item.pattern)) if _patterned(item) else None),
                    )
                    if value is not None
                }
            )
        elif isinstance(item, Ge):
            found["ge"] = item.ge
        elif isinstance(item, Le):
            found["le"] = item.le
        elif isinstance(item, MinLen):
            found["min_length"] = item.min_length
        elif isinstance(item, MaxLen):
            found["max_length"] = item.max_length
    return found


def _struct_type(annotation: Any, metadata: list[Any], structs: dict[str, Any]) -> Any:
    """The msgspec type of a strict-model type (with the constraints pydantic keeps beside it)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _struct_type(inner, [*extra, *metadata], structs)
    if origin is list:
        converted: Any = list[_struct_type(get_args(annotation)[0], [], structs)]  # type: ignore[misc]
    elif origin in (Union, UnionType):
        converted = Union[tuple(_struct_type(option, [], structs) for option in get_args(annotation))]  # noqa: UP007
    elif origin is Literal or annotation in (str, int, float, bool):
        converted = annotation
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        converted = structs[annotation.__name__]
    else:
        raise RuntimeError(f"strict_decoder cannot translate {annotation!r}")
    found = _constraints(metadata)
    return Annotated[converted, msgspec.Meta(**found)] if found else converted


def _post_init(model: type[BaseModel]) -> Callable[[msgspec.Struct], None] | None:
    """What msgspec cannot check by a field's type, run as the Struct's `__post_init__` (in C where it
    can: `astuple`, `count`): each choice element given at most once (and a required one given), and
    each Base64 field's value (`is_base64`). None when the model has neither."""
    fields = [name for name in model.model_fields if name != "resourceType" or model is strict_models.Bundle]
    choices = [
        (itemgetter(*(fields.index(name) for name in sorted(names))), len(names), required)
        for _, names, required in _CHOICES.get(model.__name__, ())
    ]
    base64 = [
        fields.index(name)
        for name, field in model.model_fields.items()
        if name in fields and _is_base64_type(field.annotation, list(field.metadata))
    ]
    if not choices and not base64:
        return None

    def check(self: msgspec.Struct) -> None:
        values = msgspec.structs.astuple(self)
        for pick, size, required in choices:
            given = size - pick(values).count(msgspec.UNSET)
            if given > 1 or (required and not given):
                raise ValueError("a choice element is given more than once, or a required one is missing")
        for index in base64:
            value = values[index]
            given = (
                value
                if isinstance(value, list)
                else ()
                if value is None or value is msgspec.UNSET
                else (value,)
            )
            if not all(is_base64(item) for item in given):
                raise ValueError("not Base64")

    return check


def _models() -> list[type[BaseModel]]:
    return [
        model
        for model in vars(strict_models).values()
        if isinstance(model, type)
        and issubclass(model, strict_models.Base)
        and model is not strict_models.Base
    ]


def _build() -> type[msgspec.Struct]:
    models = _models()
    with_validators = {model.__name__ for model in models if model.__pydantic_decorators__.model_validators}
    if with_validators != set(_CHOICES):
        raise RuntimeError(
            f"strict_decoder's choice table is out of date: {sorted(with_validators ^ set(_CHOICES))}"
        )
    structs: dict[str, Any] = {}
    for model in models:
        post_init = _post_init(model)
        tag = model.model_fields.get("resourceType")
        tagged = tag is not None and model is not strict_models.Bundle
        structs[model.__name__] = msgspec.defstruct(
            model.__name__,
            [
                (name, Any) if field.is_required() else (name, Any, msgspec.UNSET)
                for name, field in model.model_fields.items()
                if not (tagged and name == "resourceType")
            ],
            module=__name__,
            namespace=None if post_init is None else {"__post_init__": post_init},
            forbid_unknown_fields=True,
            tag_field="resourceType" if tagged else None,
            tag=get_args(tag.annotation)[0] if tagged and tag is not None else None,
            kw_only=True,
            # A decoded message is a tree, dropped at once: nothing for the cycle collector to track.
            gc=False,
        )
    # Types are read when the decoder is built: now every Struct exists, recursive ones included.
    for model in models:
        # `_post_init` finds fields by their position in the model: the Struct keeps that order.
        expected = tuple(
            name for name in model.model_fields if name in structs[model.__name__].__struct_fields__
        )
        if structs[model.__name__].__struct_fields__ != expected:
            raise RuntimeError(f"strict_decoder's {model.__name__} has its fields in another order")
        structs[model.__name__].__annotations__ = {
            name: _struct_type(field.annotation, list(field.metadata), structs)
            for name, field in model.model_fields.items()
            if name in structs[model.__name__].__struct_fields__
        }
    bundle: type[msgspec.Struct] = structs["Bundle"]
    return bundle


_decoder = msgspec.json.Decoder(_build())


def is_sound_bundle(raw: bytes) -> bool:
    """True when these bytes are a Bundle the strict models accept; False says nothing more."""
    try:
        _decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return False
    return True
