"""Reading a `csv-drop` provider's status folder: each status row stored through the gateway's sink, applied once.

For each status file (oldest name first; names starting with `.` are still being written):

- a file that does not read as `homecare-status/1` is moved to `error/` with `<name>.error.json` listing
  every problem (row, column, what is wrong); none of its rows is taken;
- otherwise each row goes to the sink as one `InboundMessage` (dedupe key `csv-drop/<ODS>/<status_id>`),
  which stores it before answering; the file then moves to `done/`, or to `error/` with a sidecar
  naming the rows the gateway refused (the other rows were taken);
- when the sink cannot store now, the file stays where it is and is read again at the next poll (rows
  stored already are acknowledged as duplicates then, not applied twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from adapters.csv_drop.folders import DropFolder, FolderUnavailable, drop_folder
from adapters.csv_drop.formats import STATUS_FORMAT, RowProblem, StatusFileError, read_status_file
from adapters.csv_drop.settings import CsvDropSettings
from adapters.inbound import Ack, AckOutcome, InboundMessage, ReportSink

log = logging.getLogger(__name__)

SCHEME = "csv-drop"
DONE = "done"
ERROR = "error"


@dataclass(slots=True)
class PollSummary:
    done: list[str] = field(default_factory=list)
    error: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


class StatusFolderPoller:
    def __init__(
        self,
        settings: CsvDropSettings,
        *,
        provider_ods: str,
        sink: ReportSink,
        folder: DropFolder | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.provider_ods = provider_ods
        self._sink = sink
        self._folder = folder or drop_folder(settings)
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        """What this poller reads: the status folder, on this machine or on an SFTP server."""
        settings = self.settings
        if settings.transport == "sftp":
            return f"sftp://{settings.sftp_username}@{settings.sftp_host}:{settings.sftp_port}{settings.status_dir}"
        return f"file://{os.path.realpath(settings.status_dir)}"

    async def open(self) -> str:
        """`StatusSource.open`: nothing to open (the folder is read at each poll)."""
        return f"status folder {self.key} of {self.provider_ods}"

    async def serve(self, stop: asyncio.Event) -> None:
        """`StatusSource.serve`: poll until `stop` is set, then close the folder's connection."""
        try:
            await self.run(stop)
        finally:
            await self.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `poll_interval_seconds` until `stop` is set; an unreachable folder is tried again."""
        while not stop.is_set():
            try:
                await self.poll_once()
            except FolderUnavailable as exc:
                log.warning("status folder of %s unavailable: %s", self.provider_ods, exc.reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval_seconds)

    async def poll_once(self) -> PollSummary:
        summary = PollSummary()
        directory = self.settings.status_dir
        names = [name for name in await self._folder.list_files(directory) if name.endswith(".csv")]
        for name in names:
            outcome = await self._take_file(directory, name)
            getattr(summary, outcome).append(name)
            if outcome == "waiting":
                break  # the gateway cannot store now: the rest waits for the next poll too
        return summary

    async def _take_file(self, directory: str, name: str) -> str:
        data = await self._folder.read(directory, name)
        try:
            rows = read_status_file(data)
        except StatusFileError as exc:
            await self._refuse(directory, name, exc.problems, applied=[])
            return ERROR
        refused: list[RowProblem] = []
        applied: list[int] = []
        for row in rows:
            ack = await self._store(
                InboundMessage(
                    scheme=SCHEME,
                    provider_ods=self.provider_ods,
                    dedupe_key=f"{SCHEME}/{self.provider_ods}/{row.status_id}",
                    reports=(row.report,),
                    raw=row.raw,
                    peer=name,
                )
            )
            if ack.outcome is AckOutcome.UNAVAILABLE:
                log.warning("status file %s of %s waits: %s", name, self.provider_ods, ack.reason)
                return "waiting"
            if ack.outcome is AckOutcome.REFUSED:
                refused.append(RowProblem(row.number, None, ack.reason or "refused"))
            else:
                applied.append(row.number)
        if refused:
            await self._refuse(directory, name, refused, applied=applied)
            return ERROR
        await self._folder.move(directory, name, DONE)
        log.info("status file %s of %s taken (%d rows)", name, self.provider_ods, len(rows))
        return DONE

    async def _store(self, message: InboundMessage) -> Ack:
        try:
            return await self._sink(message)
        except Exception as exc:  # noqa: BLE001  (whatever the gateway's failure, the file waits)
            log.error("report sink failed for %s: %s", message.dedupe_key, type(exc).__name__)
            return Ack.unavailable("the gateway could not store the row")

    async def _refuse(
        self, directory: str, name: str, problems: list[RowProblem], *, applied: list[int]
    ) -> None:
        moved = await self._folder.move(directory, name, ERROR)
        sidecar = {
            "file": name,
            "moved_to": f"{ERROR}/{moved}",
            "format": STATUS_FORMAT,
            "checked_at": self._clock().isoformat(),
            "rows_applied": applied,
            "problems": [problem.as_json() for problem in problems],
        }
        await self._folder.write_new(
            f"{directory.rstrip('/')}/{ERROR}",
            f"{moved}.error.json",
            orjson.dumps(sidecar, option=orjson.OPT_INDENT_2),
        )
        log.warning("status file %s of %s refused: %d problem(s)", name, self.provider_ods, len(problems))

    async def aclose(self) -> None:
        await self._folder.aclose()
