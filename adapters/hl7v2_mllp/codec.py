"""HL7 v2 encoding details shared by the order builder, the ACKs and the status reader: escaping, timestamps,
control ids, and reading a message into a flat list of segments checked against hl7apy's definitions.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

from hl7apy import load_reference
from hl7apy.exceptions import ChildNotFound, HL7apyException

ORDER_VERSION = "2.5"
CONTROL_ID_LENGTH = 20
# hl7apy reads these versions; a message in a point release it lacks is read with the nearest one.
_SUPPORTED_VERSIONS = (
    "2.2",
    "2.3",
    "2.3.1",
    "2.4",
    "2.5",
    "2.5.1",
    "2.6",
    "2.7",
    "2.7.1",
    "2.8",
    "2.8.1",
    "2.8.2",
)
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_UNESCAPES = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}
_ESCAPE_SEQUENCE = re.compile(r"\\([EFSTR])\\")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_TIMESTAMP = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")


class Hl7Error(ValueError):
    """A message that cannot be read; `error_code` is from HL7 table 0357 (100 segment sequence, 101
    required field missing, 102 data type error, 103 table value not found, 200 unsupported message
    type, 203 unsupported version id)."""

    def __init__(self, reason: str, *, error_code: str = "100", location: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code
        self.location = location


def escape(text: str) -> str:
    """Text made safe inside one component (HL7 v2 escape sequences for the five delimiters)."""
    for character, sequence in _ESCAPES:
        text = text.replace(character, sequence)
    return text.replace("\r", " ").replace("\n", " ")


def unescape(text: str) -> str:
    return _ESCAPE_SEQUENCE.sub(lambda match: _UNESCAPES[match.group(1)], text)


def components(raw_field: str) -> list[str]:
    """The components of a field's first repetition, unescaped."""
    first = raw_field.split("~", 1)[0]
    return [unescape(part) for part in first.split("^")]


def component(raw_field: str, position: int) -> str:
    """Component `position` (1-based) of a field, '' when absent."""
    parts = components(raw_field)
    return parts[position - 1] if len(parts) >= position else ""


def coded(code: str | None, text: str | None, system: str) -> str:
    """A CE/CWE value `code^text^system` (empty when there is neither code nor text)."""
    if not code and not text:
        return ""
    return f"{escape(code or '')}^{escape(text or '')}^{system if code else ''}".rstrip("^")


def control_id(idempotency_key: str) -> str:
    """MSH-10 for an order: derived from the gateway's idempotency key, so every retry of one message
    carries the same control id (20 characters, the length v2.5 allows)."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")[:CONTROL_ID_LENGTH]


def hl7_timestamp(moment: datetime) -> str:
    """A DTM with seconds and the UTC offset, e.g. `20261123090000+0000`."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def hl7_date(fhir_date: str | None) -> str:
    """A FHIR date (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`) as an HL7 DT."""
    return (fhir_date or "").replace("-", "")[:8]


def parse_timestamp(text: str, *, default_zone: tzinfo) -> datetime | None:
    """An HL7 DTM as an aware datetime (`default_zone` when it has no offset); None when empty."""
    text = text.strip()
    if not text:
        return None
    match = _TIMESTAMP.match(text)
    if match is None:
        raise ValueError(f"'{text[:30]}' is not an HL7 date/time (YYYYMMDDHHMMSS[+ZZZZ])")
    year, month, day, hour, minute, second, offset = match.groups()
    moment = datetime(
        int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
    )
    if offset is None:
        return moment.replace(tzinfo=default_zone)
    shift = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return moment.replace(tzinfo=timezone(shift if offset[0] == "+" else -shift))


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment: its name and its fields as raw (escaped) text, MSH numbered as HL7 numbers it."""

    name: str
    fields: tuple[str, ...]

    def field(self, number: int) -> str:
        return self.fields[number - 1] if 0 < number <= len(self.fields) else ""

    def component(self, number: int, position: int = 1) -> str:
        return component(self.field(number), position)


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    segments: tuple[Segment, ...]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def message_type(self) -> str:
        """`ORR^O02` (message code and trigger event)."""
        return f"{self.msh.component(9, 1)}^{self.msh.component(9, 2)}".rstrip("^")

    @property
    def control_id(self) -> str:
        return self.msh.field(10)

    def named(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]


def normalise(raw: bytes) -> str:
    """Text of a message: UTF-8 (ISO 8859-1 when it is not), segments separated by CR."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def header_fields(text: str) -> list[str]:
    """The MSH fields read without a parser (to address an ACK to a message that does not parse),
    numbered so that `header_fields(t)[n - 1]` is MSH-n."""
    if not text.startswith("MSH") or len(text) < 8:
        return []
    separator = text[3]
    first = text.split("\r", 1)[0]
    return [separator, *first.split(separator)[1:]]


def parse(raw: bytes) -> ParsedMessage:
    """An HL7 v2 message split into segments and fields, every segment ID checked against hl7apy's
    definition of the message's version (Z segments are local and always allowed).

    Fields are split here rather than by hl7apy's parser, which builds an object per component and
    costs about 30 ms for a two-item order: too slow to sit in front of every ACK.
    """
    text = normalise(raw)
    fields = header_fields(text)
    if not fields:
        raise Hl7Error("not an HL7 v2 message: it does not start with an MSH segment", location="MSH")
    if fields[0] != "|" or not fields[1].startswith("^~\\&"):
        raise Hl7Error("only the standard delimiters |^~\\& are read", location="MSH^1^2")
    version = fields[11].split("^", 1)[0] if len(fields) > 11 else ""
    readable = readable_version(version)
    if readable is None:
        raise Hl7Error(f"unsupported HL7 version '{version[:10]}'", error_code="203", location="MSH^1^12")
    segments = [Segment("MSH", tuple(fields))]
    for position, line in enumerate(text.split("\r")[1:], start=2):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_ID.match(name) or (len(line) > 3 and line[3] != "|"):
            raise Hl7Error(f"line {position} is not an HL7 segment", location=f"{name[:3]}^{position}")
        if not name.startswith("Z") and not _known_segment(name, readable):
            raise Hl7Error(f"{name} is not a segment of HL7 v{readable}", location=f"{name}^{position}")
        segments.append(Segment(name, tuple(line.split("|")[1:])))
    return ParsedMessage(tuple(segments))


@lru_cache(maxsize=1024)
def _known_segment(name: str, version: str) -> bool:
    try:
        load_reference(name, "Segment", version)
    except (ChildNotFound, HL7apyException):
        return False
    return True


def readable_version(version: str) -> str | None:
    """The HL7 version hl7apy reads a message of `version` with, or None when it reads none close."""
    if version in _SUPPORTED_VERSIONS:
        return version
    major_minor = ".".join(version.split(".")[:2])
    return major_minor if major_minor in _SUPPORTED_VERSIONS and major_minor.startswith("2.") else None
