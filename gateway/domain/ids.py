"""Identifiers the gateway gives what it stores: UUIDs, version 7 (RFC 9562) for intake's rows.

A version 7 UUID starts with its creation time in milliseconds, then 74 random bits. Rows created
together get neighbouring keys, so the indexes on them (the primary keys, and every index led by a
prescription's id: items, events, the outbox) grow at one end: a group commit of many prescriptions
touches a few index pages instead of one page per index per prescription, which is most of what a
database writes for a new prescription. The ids stay unguessable (the random bits) and as opaque
as before to whoever reads them; a reader can tell when one was made, as the resource itself says.
"""

from __future__ import annotations

import uuid_utils


def new_id() -> str:
    """A new time-ordered UUID (version 7), as text."""
    return str(uuid_utils.uuid7())
