"""A homecare provider that speaks HL7 v2 over MLLP, for the demo, tests and benchmarks.

    with MllpSimulatorServer(ods="VNCEL", step_delay_seconds=0.01, status_port=listener_port) as provider:
        adapter = create_adapter("hl7v2-mllp", {"host": provider.host, "port": provider.port})
        ...
        provider.orders(), provider.receipt_counts(), provider.status_log()

or from a shell: `python -m adapters.hl7v2_mllp.simulator --port 2576 --ods VNCEL --status-port 2575`.

It takes RDE^O11 orders (answering AA, or AE with a reason), de-duplicates them by control id, plays
accepted orders through the shared homecare lifecycle and reports each step to the gateway's MLLP
listener: ORR^O02 with ORC-1/ORC-5 from the standard tables where they have a code (OK, UA, HD, CR,
UC, SC/IP, SC/SC, SC/CM) and ORC-25 where they have none (out-for-delivery, delivery-failed), and
RDS^O13 with RXD for `dispensed`. Failure knobs: `down` (connections closed at once), `fail_next`
(AR 207, which the adapter retries), `no_ack_next` (read, never answered), `delay_seconds` (a slow ACK),
`reject_rate` (AE with a reason), `duplicate_status_next` (status messages sent twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field, FilePath, ValidationError

from adapters.hl7v2_mllp.codec import Hl7Error, ParsedMessage, escape, hl7_timestamp, parse
from adapters.hl7v2_mllp.framing import FramingError, frame, read_frame
from adapters.hl7v2_mllp.messages import build_ack, read_ack
from adapters.hl7v2_mllp.reports import HOMECARE_STATUS_SYSTEM
from adapters.simulation.background import BackgroundLoop, run_until_interrupted
from adapters.simulation.lifecycle import WRONG_PROVIDER, LifecycleSettings, SimulationTime
from adapters.simulation.order_book import (
    CANCEL_REFUSED,
    BookedOrder,
    BookedProvider,
    Intake,
    LifecycleEvent,
)

log = logging.getLogger(__name__)

# Homecare status -> (ORC-1, ORC-5, ORC-25): the standard codes where HL7 has them.
_ORDER_CODES = {
    "accepted": ("OK", "", ""),
    "rejected": ("UA", "", ""),
    "query": ("HD", "HD", ""),
    "cancelled": ("CR", "CA", ""),
    CANCEL_REFUSED: ("UC", "", ""),
    "in-preparation": ("SC", "IP", ""),
    "delivery-scheduled": ("SC", "SC", ""),
    "delivered": ("SC", "CM", ""),
    "out-for-delivery": ("SC", "IP", "out-for-delivery"),
    "delivery-failed": ("SC", "IP", "delivery-failed"),
    "dispensed": ("RE", "", ""),
}


class MllpSimulatorConfig(LifecycleSettings):
    """Every knob: transport knobs apply to the next message, lifecycle knobs to orders accepted afterwards."""

    down: bool = Field(default=False, description="Close every connection at once")
    fail_next: int = Field(default=0, ge=0, description="Answer the next N orders AR 207 (retryable)")
    no_ack_next: int = Field(default=0, ge=0, description="Never answer the next N orders")
    delay_seconds: float = Field(default=0.0, ge=0, le=600, description="Wait this long before each ACK")
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    status_host: str = "127.0.0.1"
    status_port: int | None = Field(default=None, ge=1, le=65535, description="The gateway's MLLP listener")
    status_retry_attempts: int = Field(default=5, ge=1, le=20)
    status_retry_seconds: float = Field(default=0.5, ge=0)
    status_ack_timeout_seconds: float = Field(default=10.0, gt=0)
    duplicate_status_next: int = Field(default=0, ge=0, description="Send the next N status messages twice")


@dataclass(frozen=True, slots=True)
class OrderReceipt:
    control_id: str
    received_at: datetime
    ack_code: str | None
    outcome: str


@dataclass(frozen=True, slots=True)
class SentStatus:
    """One status message sent to the gateway and what its ACK said."""

    control_id: str
    message_type: str
    short_form_id: str
    items: tuple[str, ...]
    status: str
    ack_code: str | None
    ack_reason: str | None
    attempts: int


class MllpProvider(BookedProvider[MllpSimulatorConfig]):
    """The provider's HL7 system: framework-free; `MllpSimulatorServer` puts it on a socket."""

    def __init__(self, config: MllpSimulatorConfig, *, time_source: SimulationTime | None = None) -> None:
        super().__init__(config, time_source=time_source)
        self._receipts: list[OrderReceipt] = []
        self._sent: list[SentStatus] = []
        self._status_connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._status_lock: asyncio.Lock | None = None

    def receipts(self) -> list[OrderReceipt]:
        with self._lock:
            return list(self._receipts)

    def status_log(self) -> list[SentStatus]:
        with self._lock:
            return list(self._sent)

    # --- orders in --------------------------------------------------------------------------------

    async def answer(self, raw: bytes) -> str | None:
        """The ACK for one framed message, or None to leave it unanswered."""
        if self._take_knob("no_ack_next"):
            self._receipt("", None, "unanswered")
            return None
        if self._config.delay_seconds:
            await asyncio.sleep(self._config.delay_seconds)
        if self._take_knob("fail_next"):
            return self._ack(raw, "AR", "The provider's system failed", "207", "failed")
        try:
            message = parse(raw)
        except Hl7Error as exc:
            return self._ack(raw, "AR", exc.reason, exc.error_code, "invalid")
        if message.message_type != "RDE^O11":
            return self._ack(raw, "AR", "only RDE^O11 orders are taken", "200", "invalid")
        if message.msh.component(6) != self._config.ods:
            return self._ack(
                raw, "AE", f"{WRONG_PROVIDER.display}; this is {self._config.ods}", "204", "refused"
            )
        orders = message.named("ORC")
        short_form = orders[0].component(4) if orders else ""
        items = tuple(orc.component(2) for orc in orders)
        if not short_form or not all(items):
            return self._ack(raw, "AE", "ORC-2 and ORC-4 are required in every ORC", "101", "invalid")
        if orders[0].field(1) == "CA":
            return self._cancel(raw, message, short_form, items)
        result = self.book.take(key=message.control_id, short_form_id=short_form, item_ids=items, message=raw)
        if result.outcome is Intake.REFUSED and result.reason is not None:
            return self._ack(
                raw, "AE", result.reason.display, "207", "refused", application=result.reason.code
            )
        if result.outcome is Intake.CONFLICT:
            return self._ack(raw, "AE", "prescription ID reused with another order", "205", "conflict")
        return self._ack(raw, "AA", None, None, result.outcome.value)

    def _cancel(self, raw: bytes, message: ParsedMessage, short_form: str, items: tuple[str, ...]) -> str:
        if self.book.order(short_form) is None:
            return self._ack(
                raw, "AE", "No order with this prescription ID has been received", "204", "refused"
            )
        # The answer (CR, or UC when too late) follows the ACK as an ORR^O02.
        self.book.cancel(short_form, items)
        return self._ack(raw, "AA", None, None, "cancel-taken")

    def _ack(
        self,
        raw: bytes,
        code: str,
        reason: str | None,
        error: str | None,
        outcome: str,
        application: str | None = None,
    ) -> str:
        control_id = ""
        with contextlib.suppress(Hl7Error):
            control_id = parse(raw).control_id
        self._receipt(control_id, code, outcome)
        return build_ack(
            raw,
            code=code,
            control_id=uuid.uuid4().hex[:20].upper(),
            now=self._time.now(),
            reason=reason,
            error_code=error,
            application_error=application,
        )

    def _receipt(self, control_id: str, code: str | None, outcome: str) -> None:
        with self._lock:
            self._receipts.append(OrderReceipt(control_id, self._time.now(), code, outcome))

    # --- status out -------------------------------------------------------------------------------

    async def _report(self, events: list[LifecycleEvent]) -> None:
        first = events[0]
        message_type = "RDS^O13" if first.status == "dispensed" else "ORR^O02"
        control_id = uuid.uuid4().hex[:20].upper()
        text = status_message(self._config.ods, message_type, control_id, events)
        times = 2 if self._take_knob("duplicate_status_next") else 1
        for _ in range(times):
            code, reason, attempts = await self._send_status(text)
            with self._lock:
                self._sent.append(
                    SentStatus(
                        control_id=control_id,
                        message_type=message_type,
                        short_form_id=first.short_form_id,
                        items=tuple(event.item_id for event in events),
                        status=first.status,
                        ack_code=code,
                        ack_reason=reason,
                        attempts=attempts,
                    )
                )

    async def _send_status(self, text: str) -> tuple[str | None, str | None, int]:
        """Send to the gateway until AA or AE (AR, no answer and connection failures are retried)."""
        config = self._config
        if config.status_port is None:
            return None, "no status_port: logged only", 0
        if self._status_lock is None:
            self._status_lock = asyncio.Lock()
        backoff, code, reason = config.status_retry_seconds, None, None
        for attempt in range(1, config.status_retry_attempts + 1):
            async with self._status_lock:
                try:
                    ack = await self._exchange(text, config)
                    code, reason = ack.code, ack.reason
                except (OSError, TimeoutError, FramingError, Hl7Error) as exc:
                    await self._drop_status_connection()
                    code, reason = None, type(exc).__name__
            if code in ("AA", "AE"):
                return code, reason, attempt
            if attempt < config.status_retry_attempts:
                await self._time.sleep(backoff)
                backoff *= 2
        return code, reason, config.status_retry_attempts

    async def _exchange(self, text: str, config: MllpSimulatorConfig) -> Any:
        if self._status_connection is None:
            self._status_connection = await asyncio.wait_for(
                asyncio.open_connection(config.status_host, config.status_port),
                config.status_ack_timeout_seconds,
            )
        reader, writer = self._status_connection
        writer.write(frame(text))
        await writer.drain()
        received = await asyncio.wait_for(read_frame(reader), config.status_ack_timeout_seconds)
        if received is None:
            raise ConnectionResetError("the gateway closed the connection")
        return read_ack(received.payload)

    async def _drop_status_connection(self) -> None:
        connection, self._status_connection = self._status_connection, None
        if connection is not None:
            connection[1].close()
            with contextlib.suppress(OSError, ConnectionError):
                await connection[1].wait_closed()

    async def stop(self) -> None:
        await self.book.stop()
        await self._drop_status_connection()


def status_message(ods: str, message_type: str, control_id: str, events: Sequence[LifecycleEvent]) -> str:
    """An ORR^O02 or RDS^O13 reporting `events` (one ORC per item), as a provider would send it."""
    now = events[0].occurred_at
    code, trigger = message_type.split("^")
    lines = [
        f"MSH|^~\\&|PHARMACY|{escape(ods)}|HOMECARE-GATEWAY|HOMECARE-GATEWAY|{hl7_timestamp(now)}||"
        f"{code}^{trigger}^{code}_{trigger}|{control_id}|P|2.5"
    ]
    if message_type == "ORR^O02":
        lines.append(f"MSA|AA|{control_id}")
    for event in events:
        control, order_status, modifier = _ORDER_CODES[event.status]
        reason = f"{escape(event.reason.code)}^{escape(event.reason.display)}" if event.reason else ""
        orc = ["ORC", control, escape(event.item_id), "", escape(event.short_form_id), order_status]
        orc += ["", "", "", hl7_timestamp(event.occurred_at)] + [""] * 6 + [reason] + [""] * 8 + [modifier]
        if modifier:
            orc[-1] = f"{modifier}^^{HOMECARE_STATUS_SYSTEM}"
        lines.append("|".join(orc).rstrip("|"))
        if event.window is not None:
            lines.append(f"TQ1|1||||||{hl7_timestamp(event.window.start)}|{hl7_timestamp(event.window.end)}")
        if event.status == "dispensed":
            # RXD-3 when, RXD-4 quantity, RXD-19 batch, RXD-20 expiry.
            rxd = ["RXD", "1", "", hl7_timestamp(event.occurred_at), "1"] + [""] * 14
            lines.append("|".join([*rxd, f"BATCH-{event.sequence}", f"{now.year + 1}1231"]))
        party = event.reason.party if event.reason else None
        if party or event.attempt is not None:
            lines.append(
                f"ZHS|{party or ''}|{event.attempt if event.attempt is not None else ''}".rstrip("|")
            )
    return "\r".join(lines)


class MllpSimulatorServer:
    """The simulator on a loopback port (a free one by default), served from a background thread.
    Extra keyword arguments are `MllpSimulatorConfig` settings."""

    def __init__(
        self,
        ods: str = "VNCEL",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        time_source: SimulationTime | None = None,
        **settings: Any,
    ) -> None:
        self.provider = MllpProvider(MllpSimulatorConfig(ods=ods, **settings), time_source=time_source)
        self.host = host
        self._requested_port = port
        self.port = 0
        self._background = BackgroundLoop(f"mllp-provider-{ods}")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    def start(self) -> int:
        self._background.start()
        self.port = self._background.run(self._listen())
        return self.port

    async def _listen(self) -> int:
        config = self.provider.config
        context = None
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(config.tls_cert_file), str(config.tls_key_file))
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port or self.port, ssl=context, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while not self.provider.config.down:
                received = await read_frame(reader)
                if received is None or self.provider.config.down:
                    return
                answer = await self.provider.answer(received.payload)
                if answer is not None:
                    writer.write(frame(answer))
                    await writer.drain()
        except (FramingError, OSError):
            return
        except asyncio.CancelledError:
            # Stopped by `stop()`: end quietly (asyncio logs a connection handler that ends cancelled).
            return
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    def stop(self) -> None:
        """Stop listening and stop the lifecycle; `start()` again listens on the same port."""
        if self._server is not None:
            self._background.run(self._close())
        self._background.stop()

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.provider.stop()
        self._server = None

    def __enter__(self) -> MllpSimulatorServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def configure(self, **changes: Any) -> MllpSimulatorConfig:
        return self.provider.configure(**changes)

    def orders(self) -> list[BookedOrder]:
        return self.provider.book.orders()

    def order(self, short_form_id: str) -> BookedOrder | None:
        return self.provider.book.order(short_form_id)

    def receipt_counts(self) -> dict[str, int]:
        return self.provider.book.receipt_counts()

    def receipts(self) -> list[OrderReceipt]:
        return self.provider.receipts()

    def status_log(self) -> list[SentStatus]:
        return self.provider.status_log()

    def events(self) -> list[LifecycleEvent]:
        return self.provider.book.events()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.hl7v2_mllp.simulator",
        description="A homecare provider speaking HL7 v2 over MLLP, for demos and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2576, help="0 picks a free port")
    parser.add_argument("--ods", default="VNCEL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--status-host", default="127.0.0.1")
    parser.add_argument(
        "--status-port", type=int, help="the gateway's MLLP listener (otherwise status is logged)"
    )
    parser.add_argument("--step-delay-seconds", type=float, default=2.0)
    parser.add_argument("--reject-rate", type=float, default=0.0)
    parser.add_argument(
        "--no-lifecycle", dest="lifecycle", action="store_false", help="only acknowledge orders"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        server = MllpSimulatorServer(
            options.ods,
            host=options.host,
            port=options.port,
            seed=options.seed,
            status_host=options.status_host,
            status_port=options.status_port,
            step_delay_seconds=options.step_delay_seconds,
            reject_rate=options.reject_rate,
            lifecycle=options.lifecycle,
        )
    except ValidationError as exc:
        sys.stderr.write(f"invalid simulator settings:\n{exc}\n")
        return 2
    port = server.start()
    sys.stdout.write(
        f"Homecare provider simulator {options.ods} (hl7v2-mllp) listening on {options.host}:{port}\n"
    )
    sys.stdout.flush()
    return run_until_interrupted(server.stop)


if __name__ == "__main__":
    sys.exit(main())
