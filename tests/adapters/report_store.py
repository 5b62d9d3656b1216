"""A report sink for the adapters' inbound tests, standing where the gateway will: it stores each message in a
real SQLite file (committed before it returns, so before any ACK), refuses reports about prescriptions
routed to another provider, and applies each dedupe key once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import asdict
from pathlib import Path

import orjson

from adapters.inbound import Ack, InboundMessage


class SqliteReportStore:
    def __init__(self, path: Path, *, routes: dict[str, str] | None = None) -> None:
        """`routes`: short-form prescription ID -> the provider it was routed to (others are unknown)."""
        self.path = path
        self.routes = routes if routes is not None else {}
        self.unavailable = False
        self.hold: asyncio.Event | None = None
        self.calls = 0
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS inbound (dedupe_key TEXT PRIMARY KEY, provider TEXT, raw BLOB,"
                " peer TEXT)"
            )
            connection.execute(
                "CREATE TABLE IF NOT EXISTS applied (dedupe_key TEXT, short_form_id TEXT, item TEXT,"
                " kind TEXT, status TEXT, report TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    async def __call__(self, message: InboundMessage) -> Ack:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.unavailable:
            return Ack.unavailable("database unreachable")
        for report in message.reports:
            if self.routes.get(report.short_form_id) != message.provider_ods:
                return Ack.refused(
                    f"prescription {report.short_form_id} is not routed to {message.provider_ods}",
                    "wrong-provider",
                )
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    "INSERT INTO inbound VALUES (?, ?, ?, ?)",
                    (message.dedupe_key, message.provider_ods, message.raw, message.peer),
                )
            except sqlite3.IntegrityError:
                connection.execute("ROLLBACK")
                return Ack.duplicate()
            for report in message.reports:
                connection.execute(
                    "INSERT INTO applied VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        message.dedupe_key,
                        report.short_form_id,
                        report.item_identifier,
                        report.kind.value,
                        report.status,
                        orjson.dumps(asdict(report), default=str).decode(),
                    ),
                )
            connection.execute("COMMIT")
        return Ack.stored()

    def stored_keys(self) -> list[str]:
        with self._connect() as connection:
            return [row[0] for row in connection.execute("SELECT dedupe_key FROM inbound ORDER BY rowid")]

    def applied(self) -> list[tuple[str, str, str, str | None]]:
        """(short-form ID, item, kind, status) of every applied report, in order."""
        with self._connect() as connection:
            return list(
                connection.execute("SELECT short_form_id, item, kind, status FROM applied ORDER BY rowid")
            )

    def reports(self) -> list[dict[str, object]]:
        with self._connect() as connection:
            return [
                orjson.loads(row[0])
                for row in connection.execute("SELECT report FROM applied ORDER BY rowid")
            ]

    def statuses(self, item: str) -> list[str | None]:
        return [status for _, applied_item, _, status in self.applied() if applied_item == item]
