"""The `hl7v2-mllp` adapter: each order is one RDE^O11 (v2.5) sent over MLLP, answered by an ACK.

One connection per provider is opened on first use and reused; messages go one at a time on it (HL7
original-mode acknowledgement is strictly message, then ACK). The control id (MSH-10) comes from the
idempotency key, so every retry of a message carries the same one and the provider can take it once.

How the provider's answer maps (the ACK is a transport acknowledgement, DESIGN §10: acceptance,
rejection after review and a cancellation's outcome come later as ORR^O02 / RDS^O13 status messages):

| answer                                              | result                                           |
|-----------------------------------------------------|--------------------------------------------------|
| AA (or CA)                                          | `delivered(answer_follows=True)`: the gateway records `sent` |
| AE/AR with ERR-3 205 (duplicate key)                | `delivered`: the provider already has this message |
| AR (or CR) with ERR-3 206 or 207 (record locked, internal error) | `AdapterTransportError` (retried)  |
| other AE/AR (or CE/CR)                              | `rejected` with the ERR text, code ERR-5 or ERR-3 |
| no ACK within `ack_timeout_seconds`                 | `AdapterTransportError`; the connection is closed |
| refused connection, reset, TLS failure, garbage     | `AdapterTransportError`                          |

A timed-out connection is closed so that a late ACK is never read as the answer to the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from adapters.base import Adapter, AdapterTransportError, Health, Order, SendResult
from adapters.hl7v2_mllp.codec import Hl7Error, control_id
from adapters.hl7v2_mllp.framing import FramingError, frame, read_frame
from adapters.hl7v2_mllp.listener import MllpListener
from adapters.hl7v2_mllp.messages import Acknowledgement, Parties, build_order_message, read_ack
from adapters.hl7v2_mllp.settings import Hl7v2MllpSettings, MllpListenerSettings
from adapters.inbound import ReportSink
from adapters.order_content import read_order_content

_RETRYABLE_ERRORS = frozenset({"206", "207"})
_ALREADY_HAVE_IT = "205"
_MAX_REASON_LENGTH = 500


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


class Hl7v2MllpAdapter:
    scheme: ClassVar[str] = "hl7v2-mllp"
    config_model: ClassVar[type[BaseModel]] = Hl7v2MllpSettings

    def __init__(self, config: Hl7v2MllpSettings, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self._clock = clock or (lambda: datetime.now(UTC))
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()

    async def send(self, order: Order, *, idempotency_key: str) -> SendResult:
        content = read_order_content(order)
        message_control_id = control_id(idempotency_key)
        config = self.config
        parties = Parties(
            sending_application=config.sending_application,
            sending_facility=config.sending_facility,
            receiving_application=config.receiving_application,
            receiving_facility=order.provider_ods,
            processing_id=config.processing_id,
        )
        message = build_order_message(
            content, control_id=message_control_id, parties=parties, now=self._clock()
        )
        async with self._lock:
            ack = await self._exchange(message.encode("utf-8"))
        if ack.control_id != message_control_id:
            await self._drop_connection()
            raise AdapterTransportError("the provider acknowledged another message (MSA-2 does not match)")
        return _result(ack)

    async def _exchange(self, payload: bytes) -> Acknowledgement:
        """Send one message and read its ACK; a reused connection found closed is reopened once."""
        for attempt in (1, 2):
            connection = await self._connect()
            reused = connection.used
            connection.used = True
            try:
                connection.writer.write(frame(payload))
                await connection.writer.drain()
                received = await asyncio.wait_for(
                    read_frame(connection.reader), timeout=self.config.ack_timeout_seconds
                )
            except TimeoutError as exc:
                await self._drop_connection()
                raise AdapterTransportError(f"no ACK within {self.config.ack_timeout_seconds:g} s") from exc
            except (OSError, FramingError) as exc:
                await self._drop_connection()
                if reused and attempt == 1:
                    continue  # the provider closed an idle connection: open a new one and resend
                raise AdapterTransportError(
                    f"connection to the provider failed ({type(exc).__name__})"
                ) from exc
            if received is None:
                await self._drop_connection()
                if reused and attempt == 1:
                    continue
                raise AdapterTransportError("the provider closed the connection without an ACK")
            try:
                return read_ack(received.payload)
            except Hl7Error as exc:
                await self._drop_connection()
                raise AdapterTransportError(f"the provider's answer is not an HL7 ACK: {exc.reason}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self) -> _Connection:
        if self._connection is not None and not self._connection.writer.is_closing():
            return self._connection
        config = self.config
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    config.host,
                    config.port,
                    ssl=config.ssl_context(),
                    server_hostname=(config.tls_server_name or config.host) if config.tls else None,
                ),
                timeout=config.connect_timeout_seconds,
            )
        except TimeoutError as exc:
            raise AdapterTransportError(
                f"provider did not accept a connection within {config.connect_timeout_seconds:g} s"
            ) from exc
        except OSError as exc:
            raise AdapterTransportError(f"provider unreachable ({type(exc).__name__}: {exc})") from exc
        self._connection = _Connection(reader, writer)
        return self._connection

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    @classmethod
    def status_listener(
        cls,
        options: Mapping[str, Any],
        *,
        sink: ReportSink,
        provider_settings: Callable[[str], Mapping[str, Any] | None],
    ) -> MllpListener:
        """The gateway's one inbound MLLP listener (`adapters.registry`): `options` are
        `MllpListenerSettings`; `provider_settings` gives the registered settings of the `hl7v2-mllp`
        provider with an ODS code (None when there is none)."""
        return MllpListener(
            MllpListenerSettings.model_validate(dict(options)),
            sink=sink,
            providers=_ParsedSettings(provider_settings),
        )

    async def check(self) -> Health:
        """Opens (or reuses) the connection; sends nothing."""
        async with self._lock:
            try:
                await self._connect()
            except AdapterTransportError as exc:
                return Health(ok=False, detail=exc.reason)
        return Health(ok=True, detail=f"MLLP connection to {self.config.host}:{self.config.port} open")

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop_connection()


if TYPE_CHECKING:
    _interface: type[Adapter] = Hl7v2MllpAdapter


class _ParsedSettings:
    """The listener's view of the registry: each provider's settings parsed, and kept while unchanged."""

    def __init__(self, registered: Callable[[str], Mapping[str, Any] | None]) -> None:
        self._registered = registered
        self._parsed: dict[str, tuple[str, Hl7v2MllpSettings | None]] = {}

    def __call__(self, ods: str) -> Hl7v2MllpSettings | None:
        raw = self._registered(ods)
        if raw is None:
            return None
        fingerprint = repr(sorted(raw.items()))
        cached = self._parsed.get(ods)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        try:
            parsed: Hl7v2MllpSettings | None = Hl7v2MllpSettings.model_validate(dict(raw))
        except ValidationError:
            parsed = None  # settings the registry would refuse: nobody may speak for this provider
        self._parsed[ods] = (fingerprint, parsed)
        return parsed


def _result(ack: Acknowledgement) -> SendResult:
    if ack.code in ("AA", "CA"):
        return SendResult.delivered(detail=f"ACK {ack.code}", answer_follows=True)
    reason = (ack.reason or f"the provider answered {ack.code}")[:_MAX_REASON_LENGTH]
    if ack.error_code == _ALREADY_HAVE_IT:
        return SendResult.delivered(
            detail=f"ACK {ack.code} 205: the provider already has it", answer_follows=True
        )
    if ack.code in ("AR", "CR") and ack.error_code in _RETRYABLE_ERRORS:
        raise AdapterTransportError(f"the provider could not take the order now ({ack.code}): {reason}")
    return SendResult.rejected(reason, code=ack.application_error or ack.error_code or ack.code)
