"""The `csv-drop` adapter: one order file per message, written atomically into the provider's order folder.

The file is named by the gateway's idempotency key (`<key>.csv`, or `<key>.json` for `fhir-json`), so
every resend of one message has the same name: a file already there is left as it is and the send
counts as delivered. Writing the file is the transport acknowledgement (`sent`); acceptance, rejection
and a cancellation's answer come back as rows of status files (`answer_follows`).

| what happened                                   | result                                        |
|-------------------------------------------------|-----------------------------------------------|
| file written, or already there                  | `delivered(answer_follows=True)`              |
| folder or SFTP server unreachable, disk full... | `AdapterTransportError` (retried)             |
| message cannot be read into CSV                 | `OrderNotExpressible` (retried until dead: people look) |
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from adapters.base import Adapter, AdapterTransportError, Health, Order, SendResult
from adapters.csv_drop.folders import DropFolder, FolderUnavailable, drop_folder
from adapters.csv_drop.formats import order_csv
from adapters.csv_drop.poller import StatusFolderPoller
from adapters.csv_drop.settings import CsvDropSettings
from adapters.inbound import ReportSink, StatusPoller
from adapters.order_content import read_order_content

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")


def order_file_name(idempotency_key: str, order_format: str) -> str:
    """`<key>.csv`; a key that is not a safe file name is replaced by its SHA-256."""
    stem = (
        idempotency_key
        if _SAFE_NAME.match(idempotency_key)
        else hashlib.sha256(idempotency_key.encode()).hexdigest()
    )
    return f"{stem}.{'json' if order_format == 'fhir-json' else 'csv'}"


class CsvDropAdapter:
    scheme: ClassVar[str] = "csv-drop"
    config_model: ClassVar[type[BaseModel]] = CsvDropSettings

    def __init__(
        self,
        config: CsvDropSettings,
        *,
        folder: DropFolder | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self._folder = folder or drop_folder(config)
        self._clock = clock or (lambda: datetime.now(UTC))

    async def send(self, order: Order, *, idempotency_key: str) -> SendResult:
        name = order_file_name(idempotency_key, self.config.order_format)
        if self.config.order_format == "fhir-json":
            data = order.message
        else:
            data = order_csv(read_order_content(order), order_key=idempotency_key, created_at=self._clock())
        try:
            written = await self._folder.write_new(self.config.order_dir, name, data)
        except FolderUnavailable as exc:
            raise AdapterTransportError(f"order file not written: {exc.reason}") from exc
        return SendResult.delivered(
            detail=f"{'written' if written else 'already there'}: {name}", answer_follows=True
        )

    @classmethod
    def status_poller(cls, config: CsvDropSettings, *, provider_ods: str, sink: ReportSink) -> StatusPoller:
        """The reader of this provider's status folder that the gateway runs (`adapters.registry`)."""
        poller = StatusFolderPoller(config, provider_ods=provider_ods, sink=sink)
        return StatusPoller(poller.key, poller)

    async def check(self) -> Health:
        """Both folders can be listed (over SFTP: the server answers, takes our key, and shows the pinned host key)."""
        try:
            await self._folder.check(self.config.order_dir)
            await self._folder.check(self.config.status_dir)
        except FolderUnavailable as exc:
            return Health(ok=False, detail=exc.reason)
        return Health(ok=True, detail="order and status folders reachable")

    async def aclose(self) -> None:
        await self._folder.aclose()


if TYPE_CHECKING:
    _interface: type[Adapter] = CsvDropAdapter
