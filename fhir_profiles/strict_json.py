"""JSON with every object key given once: a repeated key is refused, and its place named.

orjson, like most parsers, keeps the last of two equal keys without a word, while the bytes the
gateway stores and forwards still carry both: a system that keeps the first would read another
sender, patient or provider than the gateway checked. So a body is parsed with orjson and then
proved free of repeats cheaply: every key is followed by one colon, and every other colon is inside
a string. orjson's re-serialisation of what it kept holds as many colons as the body when nothing
was dropped, provided the body writes no colon as the escape `\\u003a` (the one other way to
spell it). A repeated key drops that key's colon (and whatever its first value held), so the counts
differ. Only a body with such an escape, or whose counts differ, is parsed again key by key (the
slow, exact reading) to find the repeat or clear it.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_profiles.outcome import ErrorCode, Issue, IssueType

# `\\u003a` or `\\u003A`: the only way a colon can hide from the count.
_ESCAPED_COLON = b"\\u003"


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A key given twice in one object: where the object is (FHIRPath-like) and the key."""

    path: str
    key: str

    @property
    def expression(self) -> str:
        return f"{self.path}.{self.key}" if self.path else self.key


class DuplicateKeyError(ValueError):
    def __init__(self, duplicate: DuplicateKey) -> None:
        super().__init__(f"the key '{duplicate.key[:64]}' appears twice in {duplicate.path or 'the body'}")
        self.duplicate = duplicate

    def issue(self) -> Issue:
        return Issue(
            IssueType.STRUCTURE,
            ErrorCode.INVALID_JSON,
            f"A JSON object may give each key once: {self}",
            self.duplicate.expression,
        )


def loads(raw: bytes) -> Any:
    """The parsed JSON; raises orjson.JSONDecodeError when it is not JSON, DuplicateKeyError when an
    object repeats a key."""
    document = orjson.loads(raw)
    duplicate = find_duplicate_key(raw, document)
    if duplicate is not None:
        raise DuplicateKeyError(duplicate)
    return document


def find_duplicate_key(raw: bytes, document: Any) -> DuplicateKey | None:
    """The first repeated key of `raw` (which orjson parsed to `document`), or None."""
    # A body without a backslash (found by memchr, most bodies) escapes nothing, a colon least of all.
    if b"\\" not in raw or _ESCAPED_COLON not in raw:
        try:
            if raw.count(b":") == orjson.dumps(document).count(b":"):
                return None
        except orjson.JSONEncodeError:
            pass
    return _locate(raw)


class _Pairs(list[tuple[str, Any]]):
    """An object as its key-value pairs, in order, repeats and all."""


def _locate(raw: bytes) -> DuplicateKey | None:
    # The slow, exact reading: only for bodies the count could not clear.
    tree = json.loads(raw, object_pairs_hook=_Pairs)
    root = "$"
    if isinstance(tree, _Pairs):
        resource_type = dict(tree).get("resourceType")
        root = resource_type if isinstance(resource_type, str) and resource_type.isidentifier() else "$"
    pending: deque[tuple[str, Any]] = deque([(root, tree)])
    while pending:
        path, node = pending.popleft()
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, value in node:
                if key in seen:
                    return DuplicateKey(path, key)
                seen.add(key)
                pending.append((f"{path}.{key}", value))
        elif isinstance(node, list):
            pending.extend((f"{path}[{index}]", value) for index, value in enumerate(node))
    return None
