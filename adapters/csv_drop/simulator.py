"""A homecare provider that exchanges files: it picks up order files and writes status files, in a folder on
this machine or behind its own SFTP server, for the demo, tests and benchmarks.

    with FolderSimulatorServer(tmp_path / "provider", ods="VNCEL", step_delay_seconds=0.01) as provider:
        settings = provider.local_settings()          # or provider.sftp_settings() with sftp=True
        adapter = create_adapter("csv-drop", settings)
        ...
        provider.orders(), provider.receipt_counts(), provider.status_files()

The provider's root holds `orders/` (the gateway writes there; the provider moves what it took to
`orders/taken/`) and `status/` (the provider writes one `homecare-status/1` file per lifecycle step, under
a dot name first, then renamed). Orders are de-duplicated by order key (the file name) and played through
the shared lifecycle. Knobs: `down` (orders are not picked up), `reject_rate` (a `rejected` row with the
reason), `malformed_status_next` (a status file missing its `occurred_at` column), `duplicate_status_next`
(a status file written twice, under two names, with the same status ids).

From a shell: `python -m adapters.csv_drop.simulator --root /srv/provider --ods VNCEL [--sftp-port 2222]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import orjson
from pydantic import Field

from adapters.csv_drop.folders import LocalFolder
from adapters.csv_drop.formats import STATUS_COLUMNS, read_order_file, status_csv
from adapters.simulation.background import BackgroundLoop, run_until_interrupted
from adapters.simulation.lifecycle import LifecycleSettings, SimulationTime
from adapters.simulation.order_book import BookedOrder, BookedProvider, Intake, LifecycleEvent
from fhir_profiles.homecare import validate_message

log = logging.getLogger(__name__)

ORDERS = "orders"
STATUS = "status"
TAKEN = "taken"


class FolderSimulatorConfig(LifecycleSettings):
    down: bool = Field(default=False, description="Leave order files where they are")
    poll_interval_seconds: float = Field(default=0.1, gt=0, le=60)
    malformed_status_next: int = Field(default=0, ge=0, description="Write the next N status files broken")
    duplicate_status_next: int = Field(default=0, ge=0, description="Write the next N status files twice")


@dataclass(frozen=True, slots=True)
class OrderPickup:
    name: str
    outcome: str


class FolderProvider(BookedProvider[FolderSimulatorConfig]):
    """The provider's file-exchange system, working on its own root folder."""

    def __init__(
        self, root: Path, config: FolderSimulatorConfig, *, time_source: SimulationTime | None = None
    ) -> None:
        self.root = root
        self.order_dir = root / ORDERS
        self.status_dir = root / STATUS
        for directory in (self.order_dir, self.status_dir):
            directory.mkdir(parents=True, exist_ok=True)
        super().__init__(config, time_source=time_source)
        self._files = LocalFolder()
        self._pickups: list[OrderPickup] = []
        self._written: list[str] = []
        self._sequence = 0

    def pickups(self) -> list[OrderPickup]:
        with self._lock:
            return list(self._pickups)

    def status_files(self) -> list[str]:
        with self._lock:
            return list(self._written)

    async def run(self) -> None:
        while True:
            if not self._config.down:
                await self.pick_up_orders()
            await asyncio.sleep(self._config.poll_interval_seconds)

    async def pick_up_orders(self) -> None:
        for name in await self._files.list_files(str(self.order_dir)):
            data = await self._files.read(str(self.order_dir), name)
            try:
                outcome = await self._take(name, data)
            except (ValueError, KeyError, UnicodeDecodeError):
                outcome = "unreadable"  # a real provider would raise it with the gateway's operators
            await self._files.move(str(self.order_dir), name, TAKEN)
            with self._lock:
                self._pickups.append(OrderPickup(name, outcome))

    async def _take(self, name: str, data: bytes) -> str:
        key = name.rsplit(".", 1)[0]
        if name.endswith(".json"):
            return await self._take_bundle(key, data)
        rows = read_order_file(data)
        if not rows or any(row.get("provider_ods") != self._config.ods for row in rows):
            return "wrong-provider"
        short_form = rows[0]["short_form_id"]
        items = tuple(row["item_identifier"] for row in rows)
        if rows[0]["message_type"] == "cancel":
            self.book.cancel(short_form, items)
            return "cancel"
        return await self._intake(key, short_form, items, data)

    async def _take_bundle(self, key: str, data: bytes) -> str:
        result = validate_message(orjson.loads(data), data)
        if result.cancellation is not None:
            self.book.cancel(
                result.cancellation.short_form_id, [item for item, _, _ in result.cancellation.items]
            )
            return "cancel"
        if result.order is None or result.order.performer_ods != self._config.ods:
            return "wrong-provider"
        items = tuple(item.item_identifier for item in result.order.items)
        return await self._intake(key, result.order.short_form_id, items, data)

    async def _intake(self, key: str, short_form: str, items: tuple[str, ...], data: bytes) -> str:
        result = self.book.take(key=key, short_form_id=short_form, item_ids=items, message=data)
        if result.outcome is Intake.REFUSED and result.reason is not None and result.first:
            # Refused at intake: the only way to say so is a status file rejecting every item.
            events = self.book.refusal_events(
                key=key, short_form_id=short_form, item_ids=items, reason=result.reason
            )
            await self._report(events)
        return result.outcome.value

    async def _report(self, events: list[LifecycleEvent]) -> None:
        rows = [_status_row(event) for event in events]
        data = status_csv(rows)
        if self._take_knob("malformed_status_next"):
            data = status_csv(rows).replace(b",occurred_at,", b",when,", 1)
        copies = 2 if self._take_knob("duplicate_status_next") else 1
        for _ in range(copies):
            with self._lock:
                self._sequence += 1
                name = f"{self._time.now():%Y%m%dT%H%M%S%f}-{self._sequence:06d}.csv"
            await self._files.write_new(str(self.status_dir), name, data)
            with self._lock:
                self._written.append(name)


def _status_row(event: LifecycleEvent) -> dict[str, str]:
    row = {
        "status_id": f"{event.order_key}-{event.item_id}-{event.sequence}-{event.status}",
        "short_form_id": event.short_form_id,
        "item_identifier": event.item_id,
        "status": event.status,
        "occurred_at": event.occurred_at.isoformat(),
    }
    if event.reason is not None:
        row.update(reason_code=event.reason.code, reason_text=event.reason.display)
        if event.reason.party:
            row["responsible_party"] = event.reason.party
    if event.window is not None:
        row.update(
            delivery_window_start=event.window.start.isoformat(),
            delivery_window_end=event.window.end.isoformat(),
        )
    if event.attempt is not None:
        row["delivery_attempt"] = str(event.attempt)
    if event.status == "dispensed":
        row.update(dispensed_quantity="1", batch=f"BATCH-{event.sequence}")
    assert set(row) <= set(STATUS_COLUMNS)
    return row


class _ProviderSftpServer(asyncssh.SSHServer):
    """Public-key logins only, for one user."""

    def __init__(
        self, username: str, authorized: asyncssh.SSHKey, connections: set[asyncssh.SSHServerConnection]
    ) -> None:
        self._username = username
        self._authorized = authorized
        self._connections = connections
        self._connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection is not None:
            self._connections.discard(self._connection)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._username and key.public_data == self._authorized.public_data


@dataclass(frozen=True, slots=True)
class SftpAccess:
    """What the gateway needs to log in to the simulator's SFTP server."""

    host: str
    port: int
    username: str
    private_key_file: Path
    host_key_fingerprint: str
    known_hosts_file: Path


class FolderSimulatorServer:
    """The folder provider in a background thread, optionally behind an SFTP server on loopback.

    With `sftp=True`, keys are generated in `key_dir` (default: a `keys` folder beside `root`): the
    server's host key and the gateway's client key; the server is chrooted to `root`, so the gateway's
    folders are `/orders` and `/status`."""

    def __init__(
        self,
        root: Path,
        ods: str = "VNCEL",
        *,
        sftp: bool = False,
        host: str = "127.0.0.1",
        sftp_port: int = 0,
        key_dir: Path | None = None,
        time_source: SimulationTime | None = None,
        **settings: Any,
    ) -> None:
        self.provider = FolderProvider(
            root, FolderSimulatorConfig(ods=ods, **settings), time_source=time_source
        )
        self.root = root
        self._sftp = sftp
        self._host = host
        self._sftp_port = sftp_port
        self._key_dir = key_dir or root.parent / f"{root.name}-keys"
        self._background = BackgroundLoop(f"folder-provider-{ods}")
        self._poller: asyncio.Task[None] | None = None
        self._server: asyncssh.SSHAcceptor | None = None
        self._sftp_connections: set[asyncssh.SSHServerConnection] = set()
        self.access: SftpAccess | None = None

    def start(self) -> None:
        self._background.start()
        self._background.run(self._start())

    async def _start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self.provider.run())
        if self._sftp:
            await self.start_sftp()

    async def start_sftp(self) -> None:
        host_key, client_key = self._keys()
        username = "gateway"
        self._server = await asyncssh.create_server(
            lambda: _ProviderSftpServer(username, client_key, self._sftp_connections),
            self._host,
            self._sftp_port,
            server_host_keys=[host_key],
            sftp_factory=lambda channel: asyncssh.SFTPServer(channel, chroot=os.fsencode(self.root)),
            allow_scp=False,
            reuse_address=True,
        )
        self._sftp_port = int(self._server.sockets[0].getsockname()[1])
        known_hosts = self._key_dir / "known_hosts"
        known_hosts.write_text(f"[{self._host}]:{self._sftp_port} {host_key.export_public_key().decode()}")
        self.access = SftpAccess(
            host=self._host,
            port=self._sftp_port,
            username=username,
            private_key_file=self._key_dir / "gateway_ed25519",
            host_key_fingerprint=host_key.get_fingerprint("sha256"),
            known_hosts_file=known_hosts,
        )

    def _keys(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHKey]:
        self._key_dir.mkdir(parents=True, exist_ok=True)
        keys = []
        for name in ("host_ed25519", "gateway_ed25519"):
            path = self._key_dir / name
            if not path.exists():
                asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
                path.chmod(0o600)
            keys.append(asyncssh.read_private_key(str(path)))
        return keys[0], keys[1]

    def stop_sftp(self) -> None:
        """Close the SFTP server (the provider becomes unreachable); `start_sftp` opens it on the same port."""
        self._background.run(self._close_sftp())

    def resume_sftp(self) -> None:
        self._background.run(self.start_sftp())

    async def _close_sftp(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for connection in list(self._sftp_connections):
            connection.close()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._background.run(self._stop())
        self._background.stop()

    async def _stop(self) -> None:
        await self._close_sftp()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.provider.book.stop()

    def __enter__(self) -> FolderSimulatorServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def local_settings(self, **extra: Any) -> dict[str, Any]:
        """`csv-drop` settings for the gateway to use this provider's folders directly."""
        return {
            "order_dir": str(self.provider.order_dir),
            "status_dir": str(self.provider.status_dir),
            **extra,
        }

    def sftp_settings(self, *, pin: str = "fingerprint", **extra: Any) -> dict[str, Any]:
        """`csv-drop` settings for the gateway to reach this provider over SFTP (`pin`: fingerprint or known_hosts)."""
        if self.access is None:
            raise RuntimeError("the simulator was started without sftp=True")
        access = self.access
        pinned = (
            {"sftp_host_key_fingerprint": access.host_key_fingerprint}
            if pin == "fingerprint"
            else {"sftp_known_hosts_file": str(access.known_hosts_file)}
        )
        return {
            "transport": "sftp",
            "order_dir": f"/{ORDERS}",
            "status_dir": f"/{STATUS}",
            "sftp_host": access.host,
            "sftp_port": access.port,
            "sftp_username": access.username,
            "sftp_private_key_file": str(access.private_key_file),
            **pinned,
            **extra,
        }

    def configure(self, **changes: Any) -> FolderSimulatorConfig:
        return self.provider.configure(**changes)

    def orders(self) -> list[BookedOrder]:
        return self.provider.book.orders()

    def order(self, short_form_id: str) -> BookedOrder | None:
        return self.provider.book.order(short_form_id)

    def receipt_counts(self) -> dict[str, int]:
        return self.provider.book.receipt_counts()

    def events(self) -> list[LifecycleEvent]:
        return self.provider.book.events()

    def status_files(self) -> list[str]:
        return self.provider.status_files()

    def pickups(self) -> list[OrderPickup]:
        return self.provider.pickups()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.csv_drop.simulator",
        description="A homecare provider exchanging order and status files, for demos and tests.",
    )
    parser.add_argument("--root", type=Path, required=True, help="holds orders/ and status/")
    parser.add_argument("--ods", default="VNCEL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sftp-port", type=int, help="also serve the root over SFTP on this port (0: any)")
    parser.add_argument("--step-delay-seconds", type=float, default=2.0)
    parser.add_argument("--reject-rate", type=float, default=0.0)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = FolderSimulatorServer(
        options.root,
        options.ods,
        sftp=options.sftp_port is not None,
        sftp_port=options.sftp_port or 0,
        seed=options.seed,
        step_delay_seconds=options.step_delay_seconds,
        reject_rate=options.reject_rate,
    )
    server.start()
    sys.stdout.write(f"Homecare provider simulator {options.ods} (csv-drop) on {options.root}\n")
    if server.access is not None:
        sys.stdout.write(
            f"  SFTP {server.access.host}:{server.access.port} host key {server.access.host_key_fingerprint}\n"
        )
    sys.stdout.flush()
    return run_until_interrupted(server.stop)


if __name__ == "__main__":
    sys.exit(main())
