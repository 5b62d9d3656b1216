"""The tamper-evident audit log: append in the caller's transaction, seal into a hash chain, verify.

Requests append rows without a hash, in the transaction of the change they record, so writers never
queue on the chain. The sealer (a background task of the serving process, or `audit seal`) gives
unsealed rows, oldest id first, the next place (`seq`) in the chain and stores `prev_hash` and
`row_hash = sha256(prev_hash + canonical content)`. `verify` walks the chain and names the first
row that was edited, deleted or moved, and flags rows left unsealed too long (a stopped sealer).
A chain can be rewritten whole by someone with write access to the database: record the head that
`verify` prints somewhere else and pass it back as an anchor to detect that, and the loss of rows
at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, text, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from auth.identity import Caller
from auth.models import AuditEvent, utc_text

GENESIS_HASH = "0" * 64
# Columns that make up a row's content in the chain (everything but the chain itself).
_CONTENT = (
    "id",
    "occurred_at",
    "request_id",
    "client_id",
    "user_id",
    "role",
    "ods_code",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "status",
    "reason",
)
# Columns added later (a refusal's count, source address and route): part of a row's content only
# when set, so rows sealed before they existed keep their hashes.
_OPTIONAL_CONTENT = ("count", "source", "route")
_SEALER_LOCK = 4242002  # PostgreSQL advisory lock: one sealer at a time across processes
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,100}")


class Action(StrEnum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"
    SEARCH = "search"
    ISSUE_TOKEN = "issue-token"  # noqa: S105  (an action name, not a secret)
    REGISTER_CLIENT = "register-client"
    DISABLE_CLIENT = "disable-client"
    ROTATE_CLIENT_KEY = "rotate-client-key"
    # People at the clinician pages (the row's user_id names them).
    SIGN_IN = "sign-in"
    SIGN_OUT = "sign-out"
    # A request refused before any route could name what it wanted (401, 429, 5xx): see `route`.
    REQUEST = "request"


class Outcome(StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"
    NOT_FOUND = "not-found"
    REPLAYED = "replayed"  # an identical resubmission answered with the original outcome
    THROTTLED = "throttled"  # refused by a rate limit (429)
    FAILED = "failed"  # the gateway failed (5xx)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What one audit row says. Ids, ODS codes and codes only: never patient data."""

    occurred_at: datetime
    action: Action
    outcome: Outcome
    request_id: str | None = None
    client_id: str | None = None
    user_id: str | None = None
    role: str | None = None
    ods_code: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    status: int | None = None
    reason: str | None = None
    # Refusals are coalesced: `count` requests alike (same client or address, route and status) in
    # one window; `source` is the address (only when no client is known), `route` the route template.
    count: int | None = None
    source: str | None = None
    route: str | None = None

    @classmethod
    def by(
        cls,
        caller: Caller,
        *,
        action: Action,
        outcome: Outcome,
        occurred_at: datetime,
        request_id: str | None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        status: int | None = None,
        reason: str | None = None,
    ) -> AuditRecord:
        return cls(
            occurred_at=occurred_at,
            action=action,
            outcome=outcome,
            request_id=request_id,
            client_id=caller.client_id,
            user_id=caller.user_id,
            role=caller.role.value,
            ods_code=caller.ods_code,
            resource_type=resource_type,
            resource_id=resource_id,
            status=status,
            reason=reason,
        )

    def row(self) -> dict[str, Any]:
        """The values to insert, for callers that write in bulk with Core inserts."""
        # Every field is an immutable scalar: no deep copy (`asdict` copies each one, on the hot path).
        values = {name: getattr(self, name) for name in _RECORD_FIELDS}
        values["occurred_at"] = utc_text(self.occurred_at)
        values["action"] = self.action.value
        values["outcome"] = self.outcome.value
        # An id from a URL is whatever the caller sent: keep it only if it is shaped like one of ours.
        if self.resource_id is not None and not _SAFE_ID.fullmatch(self.resource_id):
            values["resource_id"] = None
        return values


_RECORD_FIELDS = tuple(field.name for field in fields(AuditRecord))
# A Core insert: audit rows are written on hot paths and need no ORM machinery.
INSERT_AUDIT = insert(AuditEvent.__table__)  # type: ignore[attr-defined]


def append(connection: Connection, records: Sequence[AuditRecord]) -> None:
    """Add rows to the log in the connection's transaction (unsealed until the sealer chains them)."""
    if records:
        connection.execute(INSERT_AUDIT, [record.row() for record in records])


def row_hash(prev_hash: str, content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _content(event: Any) -> dict[str, Any]:
    """A row's content in the chain: from an `AuditEvent`, or a row of its columns."""
    content = {name: getattr(event, name) for name in _CONTENT}
    for name in _OPTIONAL_CONTENT:
        value = getattr(event, name)
        if value is not None:
            content[name] = value
    return content


@dataclass(frozen=True, slots=True)
class SealPlan:
    """The next rows' places in the chain, worked out from `head` (seq, row_hash; None: the chain is
    empty): one change per row, oldest id first."""

    head: tuple[int, str] | None
    changes: list[dict[str, Any]]


_TABLE = AuditEvent.__table__  # type: ignore[attr-defined]
_HEAD = (
    core_select(_TABLE.c.seq, _TABLE.c.row_hash)
    .where(_TABLE.c.seq.is_not(None))
    .order_by(_TABLE.c.seq.desc())
    .limit(1)
)
_UNSEALED = (
    core_select(*(_TABLE.c[name] for name in (*_CONTENT, *_OPTIONAL_CONTENT)))
    .where(_TABLE.c.seq.is_(None))
    .order_by(_TABLE.c.id)
    .limit(bindparam("limit"))
)
_SEAL_ROW = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("target"), _TABLE.c.seq.is_(None))
    .values(seq=bindparam("seq"), prev_hash=bindparam("prev_hash"), row_hash=bindparam("row_hash"))
)


def _head(connection: Connection) -> tuple[int, str] | None:
    row = connection.execute(_HEAD).first()
    return (int(row[0]), str(row[1])) if row else None


def plan_seal(connection: Connection, *, limit: int = 1000) -> SealPlan:
    """Chain up to `limit` unsealed rows after the current head, without writing: the hashing is the
    sealer's work, and needs no write lock (on SQLite, no writer waits for it)."""
    head = _head(connection)
    seq, prev = head if head else (0, GENESIS_HASH)
    changes: list[dict[str, Any]] = []
    for row in connection.execute(_UNSEALED, {"limit": limit}):
        seq += 1
        digest = row_hash(prev, _content(row))
        changes.append({"target": row.id, "seq": seq, "prev_hash": prev, "row_hash": digest})
        prev = digest
    return SealPlan(head, changes)


def apply_seal(connection: Connection, plan: SealPlan) -> int:
    """Store a plan in the connection's write transaction; returns how many rows it sealed. Nothing
    is stored (0) when the chain moved since the plan (another sealer came first) or, on PostgreSQL,
    another sealer holds the chain now."""
    if not plan.changes:
        return 0
    if connection.dialect.name == "postgresql":
        locked = connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _SEALER_LOCK})
        if not locked.scalar_one():
            return 0
    if _head(connection) != plan.head:
        return 0
    connection.execute(_SEAL_ROW, plan.changes)
    return len(plan.changes)


def seal(session: Session, *, limit: int = 1000) -> int:
    """Chain up to `limit` unsealed rows after the current head in the session's write transaction;
    returns how many were sealed (0 when another sealer holds the chain)."""
    connection = session.connection()
    return apply_seal(connection, plan_seal(connection, limit=limit))


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    row_hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.row_hash}"

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        seq, separator, digest = text.partition(":")
        hexadecimal = len(digest) == 64 and all(c in string.hexdigits for c in digest)
        if not separator or not (seq.isascii() and seq.isdigit()) or not hexadecimal:
            raise ValueError("an anchor is SEQ:HASH, as `audit verify` prints it")
        return cls(int(seq), digest.lower())


@dataclass(frozen=True, slots=True)
class Verification:
    sealed: int
    unsealed: int
    head: ChainHead | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(
    session: Session,
    *,
    now: datetime,
    max_unsealed_age: timedelta,
    anchors: Sequence[ChainHead] = (),
    batch: int = 1000,
) -> Verification:
    """Walk the chain in `seq` order; the first problem found is named in `problem`."""
    expected_prev, expected_seq = GENESIS_HASH, 1
    previous: AuditEvent | None = None
    hashes_at: dict[int, str] = {}
    wanted = {anchor.seq for anchor in anchors}
    problem: str | None = None
    last_seq = 0
    while problem is None:
        rows = list(
            session.execute(
                select(AuditEvent)
                .where(col(AuditEvent.seq) >= expected_seq)
                .order_by(col(AuditEvent.seq))
                .limit(batch)
            ).scalars()
        )
        if not rows:
            break
        for event in rows:
            problem = _check_link(session, event, previous, expected_seq, expected_prev)
            if problem is not None:
                break
            if event.seq in wanted:
                hashes_at[expected_seq] = str(event.row_hash)
            expected_prev, expected_seq, previous = str(event.row_hash), expected_seq + 1, event
            last_seq = expected_seq - 1
        session.expunge_all()
    head = ChainHead(last_seq, expected_prev) if last_seq else None
    if problem is None:
        problem = _check_anchors(anchors, hashes_at, head)
    unsealed = int(
        session.execute(
            select(func.count()).select_from(AuditEvent).where(col(AuditEvent.seq).is_(None))
        ).scalar_one()
    )
    if problem is None and unsealed:
        problem = _check_unsealed_age(session, now=now, max_age=max_unsealed_age)
    return Verification(sealed=last_seq, unsealed=unsealed, head=head, problem=problem)


def _name(event: AuditEvent) -> str:
    return f"audit row id {event.id} (seq {event.seq})"


def _check_link(
    session: Session, event: AuditEvent, previous: AuditEvent | None, expected_seq: int, expected_prev: str
) -> str | None:
    assert event.seq is not None
    after = f"after {_name(previous)}" if previous else "at the start of the chain"
    if event.seq != expected_seq:
        missing = (
            f"seq {expected_seq}" if event.seq == expected_seq + 1 else f"seqs {expected_seq}-{event.seq - 1}"
        )
        return f"{missing} missing {after}, before {_name(event)}: audit rows were deleted"
    if event.prev_hash != expected_prev:
        moved = session.execute(
            select(AuditEvent).where(col(AuditEvent.row_hash) == event.prev_hash).limit(1)
        ).scalar_one_or_none()
        if moved is not None:
            return (
                f"{_name(event)} is out of order: it was sealed after {_name(moved)}, "
                f"but now stands {after}: audit rows were reordered"
            )
        return (
            f"{_name(event)} does not follow the row {after}: that row was rewritten, "
            "or a row between them was deleted"
        )
    if row_hash(expected_prev, _content(event)) != event.row_hash:
        return f"{_name(event)} was edited: its content no longer matches its hash"
    return None


def _check_anchors(
    anchors: Sequence[ChainHead], hashes_at: dict[int, str], head: ChainHead | None
) -> str | None:
    for anchor in anchors:
        found = hashes_at.get(anchor.seq)
        if found is None:
            last = head.seq if head else 0
            return f"anchor {anchor} is beyond the end of the chain (seq {last}): sealed rows were deleted"
        if found != anchor.row_hash:
            return f"anchor {anchor} does not match the chain (hash {found}): the chain was rewritten"
    return None


def _check_unsealed_age(session: Session, *, now: datetime, max_age: timedelta) -> str | None:
    oldest = session.execute(
        select(col(AuditEvent.id), col(AuditEvent.occurred_at))
        .where(col(AuditEvent.seq).is_(None))
        .order_by(col(AuditEvent.occurred_at))
        .limit(1)
    ).first()
    if oldest is not None and oldest[1] < utc_text(now - max_age):
        return (
            f"audit row id {oldest[0]} (recorded {oldest[1]}) is still unsealed after more than "
            f"{int(max_age.total_seconds())} s: is the sealer running?"
        )
    return None
