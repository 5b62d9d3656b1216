"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): each message is sent as 0x0B, the message, 0x1C 0x0D.

`read_frame` reads one framed message from a stream. Bytes before a start block are ignored (as
MLLP receivers do); a frame larger than the limit is read to its end and reported as oversized, so
the receiver can still answer it instead of dropping the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
_CHUNK = 64 * 1024


def frame(message: str | bytes) -> bytes:
    payload = message.encode("utf-8") if isinstance(message, str) else message
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes
    oversized: bool = False


class FramingError(Exception):
    """The stream ended inside a frame, or carried no frame at all."""


async def read_frame(
    reader: asyncio.StreamReader, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Frame | None:
    """The next frame, or None when the peer closed the connection cleanly between frames."""
    started = False
    buffer = bytearray()
    oversized = False
    while True:
        try:
            chunk = await reader.readuntil(END_BLOCK)
            complete = True
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not started and not buffer:
                return None
            if not started and START_BLOCK not in exc.partial:
                if exc.partial.strip():
                    raise FramingError(
                        "the connection closed after bytes that were not an MLLP frame"
                    ) from exc
                return None
            raise FramingError("the connection closed in the middle of a message") from exc
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.readexactly(min(exc.consumed, _CHUNK) or 1)
            complete = False
        if not started:
            start = chunk.find(START_BLOCK)
            if start < 0:
                continue  # bytes outside any frame (noise between messages) are skipped
            chunk = chunk[start + 1 :]
            started = True
        if not oversized:
            buffer += chunk
            if len(buffer) > max_bytes + len(END_BLOCK):
                oversized = True
                buffer.clear()
        if complete:
            if oversized:
                return Frame(b"", oversized=True)
            return Frame(bytes(buffer[: -len(END_BLOCK)]))
