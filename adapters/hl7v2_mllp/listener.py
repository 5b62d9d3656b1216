"""The gateway's inbound MLLP listener: providers' ORR^O02 and RDS^O13 status messages, stored before they are ACKed.

One listener (its own port, `MllpListenerSettings`) serves every `hl7v2-mllp` provider. For each
framed message it:

1. reads it (`reports.read_status_message`); a message that cannot be read is answered AR (not HL7,
   unsupported type or version) or AE (content: a missing field, an unknown status), with an ERR
   segment saying what and where, and the connection stays open;
2. authenticates it: MSH-4 must name a provider whose settings allow the connection's source address
   (`inbound_allowed_addresses`) and, when `inbound_tls_subject` is set, whose verified client
   certificate carries that name; otherwise AR;
3. hands an `InboundMessage` (dedupe key `hl7v2-mllp/<ODS>/<MSH-10>`) to the gateway's `ReportSink`
   and waits: the sink stores it durably before it returns;
4. answers from the sink's `Ack`: AA for stored or duplicate (a repeated control id is acknowledged
   and applied once), AE with the reason for a refusal (another provider's prescription, an illegal
   transition), AR for "could not store now, send again" (also when the sink fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from adapters.hl7v2_mllp.codec import Hl7Error
from adapters.hl7v2_mllp.framing import FramingError, frame, read_frame
from adapters.hl7v2_mllp.messages import build_ack
from adapters.hl7v2_mllp.reports import read_status_message
from adapters.hl7v2_mllp.settings import Hl7v2MllpSettings, MllpListenerSettings
from adapters.inbound import Ack, AckOutcome, InboundMessage, ReportSink

log = logging.getLogger(__name__)

SCHEME = "hl7v2-mllp"
ProviderDirectory = Callable[[str], Hl7v2MllpSettings | None]
"""The `hl7v2-mllp` settings of the provider with this ODS code, or None (not such a provider)."""
# How long `aclose` lets a connection finish the message it is storing before cancelling it.
_CLOSE_GRACE_SECONDS = 5.0
# Problems with the message as a whole (HL7 table 0357, 2xx): application reject.
_REJECT_CODES = frozenset({"200", "201", "202", "203"})


def dedupe_key(provider_ods: str, control_id: str) -> str:
    return f"{SCHEME}/{provider_ods}/{control_id}"


class MllpListener:
    """Serves inbound MLLP connections until `aclose()`."""

    def __init__(
        self,
        settings: MllpListenerSettings,
        *,
        sink: ReportSink,
        providers: ProviderDirectory,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._providers = providers
        self._clock = clock or (lambda: datetime.now(UTC))
        self._zone = ZoneInfo(settings.default_timezone)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] | None = None
        """Where it listens, once started."""

    async def start(self) -> tuple[str, int]:
        """Listen; returns the address (the port the OS chose when `port` is 0)."""
        self._server = await asyncio.start_server(
            self._serve_connection,
            self.settings.host,
            self.settings.port,
            ssl=self.settings.ssl_context(),
            limit=64 * 1024,
            # Several gateway processes on one machine (serve --workers N) share the port: the
            # kernel spreads the providers' connections over them.
            reuse_port=hasattr(socket, "SO_REUSEPORT"),
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        log.info("mllp listener on %s:%s", host, port)
        return self.address

    async def open(self) -> str:
        """`StatusSource.open`: listen."""
        host, port = await self.start()
        return f"MLLP listener on {host}:{port}"

    async def serve(self, stop: asyncio.Event) -> None:
        """`StatusSource.serve`: connections are served until `stop` is set, then closed."""
        try:
            await stop.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and end every connection: each is closed, so a message being stored is
        stored and its handler ends on its own; one still running after a grace period is cancelled."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._connections:
                _, running = await asyncio.wait(list(self._connections), timeout=_CLOSE_GRACE_SECONDS)
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        names = _certificate_names(writer.get_extra_info("peercert"))
        try:
            while True:
                received = await asyncio.wait_for(
                    read_frame(reader, max_bytes=self.settings.max_message_bytes),
                    timeout=self.settings.idle_timeout_seconds,
                )
                if received is None:
                    return
                if received.oversized:
                    answer = self._ack(
                        b"", "AR", f"message larger than {self.settings.max_message_bytes} bytes"
                    )
                else:
                    answer = await self.answer(received.payload, address=address, certificate_names=names)
                writer.write(frame(answer))
                await writer.drain()
        except (TimeoutError, FramingError, OSError) as exc:
            log.info("mllp connection from %s ended: %s", address, type(exc).__name__)
        except asyncio.CancelledError:
            # Cut short by `aclose()`: end quietly (asyncio logs a connection handler that ends cancelled). A
            # message stored but not yet acknowledged is sent again by the provider and taken as a repeat.
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def answer(self, raw: bytes, *, address: str, certificate_names: frozenset[str] | None) -> str:
        """The ACK for one message received from `address` (after the sink has stored it)."""
        try:
            status = read_status_message(raw, default_zone=self._zone)
        except Hl7Error as exc:
            code = "AR" if exc.error_code in _REJECT_CODES or exc.location in (None, "MSH") else "AE"
            log.info("mllp message from %s refused (%s): %s", address, code, exc.reason)
            return self._ack(raw, code, exc.reason, error_code=exc.error_code, location=exc.location)
        provider = self._providers(status.sending_facility)
        if provider is None or not provider.allows(address, certificate_names):
            log.warning("mllp message from %s not authorised for %s", address, status.sending_facility)
            return self._ack(
                raw, "AR", f"this connection may not send for '{status.sending_facility}'", location="MSH^1^4"
            )
        message = InboundMessage(
            scheme=SCHEME,
            provider_ods=status.sending_facility,
            dedupe_key=dedupe_key(status.sending_facility, status.control_id),
            reports=status.reports,
            raw=raw,
            peer=address,
        )
        ack = await self._store(message)
        log.info(
            "mllp %s %s from %s: %s",
            status.message_type,
            status.control_id,
            status.sending_facility,
            ack.outcome,
        )
        return self._answer(raw, ack)

    async def _store(self, message: InboundMessage) -> Ack:
        try:
            return await self._sink(message)
        except Exception as exc:  # noqa: BLE001  (whatever the gateway's failure, the provider gets an AR)
            log.error("report sink failed for %s: %s", message.dedupe_key, type(exc).__name__)
            return Ack.unavailable("the gateway could not store the message; send it again")

    def _answer(self, raw: bytes, ack: Ack) -> str:
        if ack.outcome is AckOutcome.STORED:
            return self._ack(raw, "AA", None)
        if ack.outcome is AckOutcome.DUPLICATE:
            return self._ack(raw, "AA", "duplicate: already received, applied once")
        if ack.outcome is AckOutcome.REFUSED:
            return self._ack(raw, "AE", ack.reason or "refused", error_code="204", application_error=ack.code)
        return self._ack(raw, "AR", ack.reason or "not stored; send it again", error_code="207")

    def _ack(
        self,
        raw: bytes,
        code: str,
        reason: str | None,
        *,
        error_code: str | None = None,
        location: str | None = None,
        application_error: str | None = None,
    ) -> str:
        return build_ack(
            raw,
            code=code,
            control_id=uuid.uuid4().hex[:20].upper(),
            now=self._clock(),
            reason=reason,
            error_code=error_code,
            error_location=location,
            application_error=application_error,
        )


def _certificate_names(certificate: Any) -> frozenset[str] | None:
    """The subject CNs and DNS names of a verified client certificate (None without one)."""
    if not isinstance(certificate, dict) or not certificate:
        return None
    names = {value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")
    return frozenset(names)
