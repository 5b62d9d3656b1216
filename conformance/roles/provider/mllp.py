"""The `hl7v2-mllp` transport: RDE^O11 over MLLP (0x0B message 0x1C 0x0D) to the provider's listener,
and the suite's own MLLP listener at --listen taking ORR^O02 / RDS^O13 status messages (ACK AA once
read; AE for what it cannot read, as the gateway's listener answers)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import urlsplit

from conformance.config import ConfigError, ProviderConfig
from conformance.messages import Message
from conformance.model import Evidence, Exchange
from conformance.roles.provider import hl7
from conformance.roles.provider.base import Acknowledgement, ReportSink, StatusReport, control_id, order_facts
from conformance.wire import TargetUnreachableError

START, END = b"\x0b", b"\x1c\x0d"
MAX_FRAME = 1024 * 1024
RETRIED_ERRORS = {"206", "207"}  # README hl7v2-mllp: AR with these is retried, not a refusal
DUPLICATE = "205"


def frame(text: str) -> bytes:
    return START + text.encode("utf-8") + END


class FrameReader:
    """Frames from a socket: bytes before a start block are skipped, as MLLP receivers do."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = b""

    def next(self) -> bytes | None:
        """The next frame's payload; None when the peer closed the connection."""
        while True:
            start = self.buffer.find(START)
            if start >= 0:
                end = self.buffer.find(END, start)
                if end >= 0:
                    payload, self.buffer = self.buffer[start + 1 : end], self.buffer[end + len(END) :]
                    return payload
            elif self.buffer:
                self.buffer = b""
            if len(self.buffer) > MAX_FRAME:
                raise ValueError("a frame larger than 1 MiB")
            chunk = self.connection.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk


def parse_target(target: str) -> tuple[str, int]:
    parts = urlsplit(target)
    if parts.scheme != "mllp" or not parts.hostname or parts.port is None:
        raise ConfigError(f"provider role (hl7v2-mllp): --target must be mllp://HOST:PORT; got {target!r}")
    return parts.hostname, parts.port


class MllpTransport:
    scheme: ClassVar[str] = "hl7v2-mllp"
    status_over_http: ClassVar[bool] = False
    refusals_answered: ClassVar[bool] = True
    same_second_reports: ClassVar[bool] = True
    invalid_order: ClassVar[str] = "an RDE^O11 without ORC-4 (the prescription ID every ORC must carry)"

    def __init__(self, target: str, config: ProviderConfig, sends: Evidence) -> None:
        self.target = target
        self.host, self.port = parse_target(target)
        self.config = config
        self.sends = sends
        self._listener: _Listener | None = None

    @property
    def status_address(self) -> str:
        if self._listener is None:
            return "(no listener)"
        host, port = self._listener.socket.getsockname()[:2]
        return f"mllp://{host}:{port}"

    def open(self, sink: ReportSink, listen: tuple[str, int] | None) -> None:
        if listen is None:
            raise ConfigError(
                "provider role (hl7v2-mllp): give --listen HOST:PORT (or [provider] listen) "
                "for the suite's MLLP listener the provider sends status to"
            )
        self._listener = _Listener(listen, sink, self.config.ods or "")
        threading.Thread(target=self._listener.serve_forever, name="conformance-mllp", daemon=True).start()

    def send(
        self, message: Message, *, idempotency_key: str, request_id: str, invalid: bool = False
    ) -> Acknowledgement:
        text = hl7.order_message(
            order_facts(message),
            control_id=control_id(idempotency_key),
            now=datetime.now(UTC),
            invalid=invalid,
        )
        answer: bytes | None = None
        error = None
        try:
            connection = socket.create_connection((self.host, self.port), timeout=10)
        except OSError as exc:
            self._record(text, None, f"{type(exc).__name__}: {exc}")
            raise TargetUnreachableError(f"{self.target}: {type(exc).__name__}: {exc}") from exc
        try:
            with connection:
                connection.settimeout(self.config.ack_timeout_seconds)
                connection.sendall(frame(text))
                answer = FrameReader(connection).next()
                if answer is None:
                    error = "the provider closed the connection without an ACK"
        except (OSError, ValueError) as exc:
            error = f"no ACK: {type(exc).__name__}: {exc}"
        exchange = self._record(text, answer, error)
        if answer is None:
            return Acknowledgement(f"no ACK ({error})", accepted=False, exchange=exchange)
        try:
            ack = hl7.read_ack(answer)
        except hl7.Hl7ReadError as exc:
            return Acknowledgement(f"an answer that is no ACK ({exc})", accepted=False, exchange=exchange)
        return _judged(ack, exchange)

    def _record(self, text: str, answer: bytes | None, error: str | None) -> Exchange:
        exchange = Exchange(
            direction="sent",
            method="MLLP",
            url=self.target,
            request_headers={},
            request_body=hl7.readable(text),
            status=None,
            response_headers={},
            response_body="" if answer is None else hl7.readable(answer),
            error=error,
        )
        self.sends.exchanges.append(exchange)
        return exchange

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()


def _judged(ack: hl7.Ack, exchange: Exchange | None) -> Acknowledgement:
    """README hl7v2-mllp: AA taken; AE/AR refused (ERR-8 or MSA-3 the reason), except AR 206/207
    (retried) and 205 (a duplicate: the provider already has it)."""
    code = {"CA": "AA", "CE": "AE", "CR": "AR"}.get(ack.code, ack.code)  # enhanced-mode commit ACKs
    named = f"{ack.code}" + (f" {ack.error_code}" if ack.error_code else "")
    if code not in ("AA", "AE", "AR"):
        return Acknowledgement(
            f"MSA-1 {ack.code[:5]!r}, no acknowledgement code", accepted=False, exchange=exchange
        )
    if code == "AA" or (code in ("AE", "AR") and ack.error_code == DUPLICATE):
        return Acknowledgement(named, accepted=True, reason=ack.reason, exchange=exchange)
    retried = code == "AR" and ack.error_code in RETRIED_ERRORS
    return Acknowledgement(
        named + (f" ({ack.reason})" if ack.reason else ""),
        accepted=False,
        permanent_refusal=not retried,
        reason=ack.reason,
        exchange=exchange,
    )


class _Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sink: ReportSink, ods: str) -> None:
        self.sink = sink
        self.ods = ods
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def take(self, raw: bytes, peer: str) -> str:
        now = datetime.now(UTC)
        url = f"mllp://{peer}"
        try:
            key, read = hl7.status_reports(raw)
        except hl7.Hl7ReadError as exc:
            answer = hl7.ack_for(raw, code="AE", now=now, reason=str(exc))
            self.sink([], _received(raw, answer, url))
            return answer
        problems = [r.problem for r in read if r.problem]
        # AE for a status the README does not map (as the gateway answers), AA otherwise.
        answer = hl7.ack_for(
            raw, code="AE" if problems else "AA", now=now, reason="; ".join(problems) or None
        )
        with self.lock:
            repeat = key in self.seen  # a repeated control id is acknowledged and applied once
            self.seen.add(key)
        at = time.monotonic()
        reports = [] if repeat else [StatusReport(r.task, True, at, r.problem) for r in read]
        self.sink(reports, _received(raw, answer, url))
        return answer

    def stop(self) -> None:
        self.shutdown()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self.server_close()


class _Handler(socketserver.BaseRequestHandler):
    server: _Listener

    def handle(self) -> None:
        connection: socket.socket = self.request
        with self.server.lock:
            self.server.connections.add(connection)
        peer = "{}:{}".format(*self.client_address[:2])
        reader = FrameReader(connection)
        try:
            while True:
                payload = reader.next()
                if payload is None:
                    return
                connection.sendall(frame(self.server.take(payload, peer)))
        except (OSError, ValueError):
            return
        finally:
            with self.server.lock:
                self.server.connections.discard(connection)


def _received(raw: bytes, answer: str, url: str) -> Exchange:
    return Exchange(
        direction="received",
        method="MLLP",
        url=url,
        request_headers={},
        request_body=hl7.readable(raw),
        status=None,
        response_headers={},
        response_body=hl7.readable(answer),
    )
