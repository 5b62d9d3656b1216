"""A subscriber's rest-hook endpoint on a real port, for tests and trying subscriptions out.

It records every notification, verifies its `X-Signature` with the gateway's public keys (fetched
from the gateway's `/.well-known/jwks.json`, and fetched again when a signature names a key it does
not know: the gateway rotated), and answers with the status it is told to:

    with ReceiverServer(jwks_url="http://127.0.0.1:8000/.well-known/jwks.json") as endpoint:
        ...  # subscribe with channel.endpoint = endpoint.url
        endpoint.receiver.delivered(), endpoint.receiver.configure(status_code=503, fail_next=2)

or from a shell: `python -m gateway.notify.receiver --port 8200 --jwks-url URL` prints each one.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn
from joserfc.jwk import KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.notify.signature import SIGNATURE_HEADER, SignatureError, verify_detached


@dataclass(frozen=True, slots=True)
class ReceivedNotification:
    """One request as it arrived, and what the receiver made of it."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: datetime
    answered: int
    signature_valid: bool
    signature_problem: str | None
    kid: str | None

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    @property
    def signature(self) -> str | None:
        return self.headers.get(SIGNATURE_HEADER.lower())

    def resource(self) -> dict[str, Any] | None:
        """The notified resource (a Task), or None for an empty-body notification."""
        if not self.body:
            return None
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


@dataclass(slots=True)
class _Behaviour:
    status_code: int = 200
    fail_next: int = 0
    delay_seconds: float = 0.0


@dataclass(slots=True)
class Receiver:
    """The receiver's state: what it was sent, and how it answers. Thread-safe."""

    jwks_url: str | None = None
    keys: KeySet | None = None
    _received: list[ReceivedNotification] = field(default_factory=list)
    _behaviour: _Behaviour = field(default_factory=_Behaviour)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(
        self,
        *,
        status_code: int | None = None,
        fail_next: int | None = None,
        delay_seconds: float | None = None,
    ) -> None:
        """Answer `status_code` from now on; or fail (503) the next `fail_next` requests; or answer late."""
        with self._lock:
            if status_code is not None:
                self._behaviour.status_code = status_code
            if fail_next is not None:
                self._behaviour.fail_next = fail_next
            if delay_seconds is not None:
                self._behaviour.delay_seconds = delay_seconds

    def notifications(self) -> list[ReceivedNotification]:
        """Every request received, in arrival order (failed answers included)."""
        with self._lock:
            return list(self._received)

    def delivered(self) -> list[ReceivedNotification]:
        """The notifications the receiver took (answered 2xx), in arrival order."""
        return [n for n in self.notifications() if 200 <= n.answered < 300]

    def order_problems(self) -> list[str]:
        """Where a taken notification is older (`lastModified`) than one taken before it for the same
        Task: empty when every Task's notifications came in order."""
        newest: dict[str, str] = {}
        problems = []
        for index, notification in enumerate(self.delivered()):
            task = notification.resource()
            if task is None:
                continue
            task_id, modified = str(task.get("id")), str(task.get("lastModified"))
            before = newest.get(task_id)
            if before is not None and _moment(modified) < _moment(before):
                problems.append(f"notification {index} (Task {task_id}, {modified}) came after {before}")
            newest[task_id] = modified if before is None else max(modified, before, key=_moment)
        return problems

    def _answer(self) -> tuple[int, float]:
        with self._lock:
            delay = self._behaviour.delay_seconds
            if self._behaviour.fail_next > 0:
                self._behaviour.fail_next -= 1
                return 503, delay
            return self._behaviour.status_code, delay

    async def _key_set(self, *, refresh: bool) -> KeySet | None:
        if self.jwks_url is None or (self.keys is not None and not refresh):
            return self.keys
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(self.jwks_url)
        response.raise_for_status()
        self.keys = KeySet.import_key_set(response.json())
        return self.keys

    async def _verify(self, signature: str | None, body: bytes) -> tuple[bool, str | None, str | None]:
        if signature is None:
            return False, "no signature header", None
        keys = await self._key_set(refresh=False)
        if keys is None:
            return False, "no keys to verify with", None
        try:
            header = verify_detached(signature, body, keys)
        except SignatureError as first:
            if self.jwks_url is None:
                return False, str(first), None
            # Perhaps signed with a key newer than our copy of the key set: fetch it again, once.
            try:
                header = verify_detached(signature, body, await self._key_set(refresh=True) or keys)
            except SignatureError as again:
                return False, str(again), None
        return True, None, str(header.get("kid"))

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        status_code, delay = self._answer()
        if delay:
            await asyncio.sleep(delay)
        headers = {name.lower(): value for name, value in request.headers.items()}
        valid, problem, kid = await self._verify(headers.get(SIGNATURE_HEADER.lower()), body)
        received = ReceivedNotification(
            path=request.url.path,
            headers=headers,
            body=body,
            received_at=datetime.now(UTC),
            answered=status_code,
            signature_valid=valid,
            signature_problem=problem,
            kid=kid,
        )
        with self._lock:
            self._received.append(received)
        return Response(status_code=status_code)


def _moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def create_receiver_app(receiver: Receiver) -> Starlette:
    return Starlette(routes=[Route("/{path:path}", receiver.handle, methods=["POST", "PUT"])])


class ReceiverServer:
    """The receiver on a loopback port (a free one by default), served from a background thread."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        keys: KeySet | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.receiver = Receiver(jwks_url=jwks_url, keys=keys)
        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        config = uvicorn.Config(
            create_receiver_app(self.receiver), log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="rest-hook-receiver",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The endpoint to subscribe with."""
        return f"http://{self.host}:{self._socket.getsockname()[1]}/notifications"

    def __enter__(self) -> ReceiverServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the receiver did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A rest-hook endpoint that prints verified notifications.")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--jwks-url", default="http://127.0.0.1:8000/.well-known/jwks.json")
    arguments = parser.parse_args(argv)
    with ReceiverServer(jwks_url=arguments.jwks_url, port=arguments.port) as endpoint:
        receiver = endpoint.receiver
        sys.stdout.write(f"Subscribe with channel.endpoint {endpoint.url} (Ctrl-C stops)\n")
        seen = 0
        try:
            while True:
                time.sleep(0.2)
                for notification in receiver.notifications()[seen:]:
                    task = notification.resource() or {}
                    status = task.get("businessStatus", {}).get("coding", [{}])[0].get("code", "(ping)")
                    verdict = (
                        "signature ok" if notification.signature_valid else notification.signature_problem
                    )
                    sys.stdout.write(
                        f"{notification.received_at.isoformat()} {task.get('id', '-')} {status}: {verdict}\n"
                    )
                seen = len(receiver.notifications())
        except KeyboardInterrupt:
            return


if __name__ == "__main__":
    main()
