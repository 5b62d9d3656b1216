"""The suite's wire: an HTTP client that records every exchange as evidence (credentials
redacted), and a small HTTP endpoint on loopback for the actors the suite plays (a provider's
system, a subscriber, a gateway). Standard library server: nothing shared with the system under test."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from conformance.model import Evidence, Exchange

BODY_LIMIT = 6000
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_SECRET_FIELDS = {"client_assertion", "access_token", "client_secret", "refresh_token", "id_token"}
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie"}


def _jwt_summary(match: re.Match[str]) -> str:
    head = match.group(0).split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        alg = header.get("alg") if isinstance(header, dict) else None
    except ValueError:
        alg = None
    return f"[JWT alg={alg} redacted]"


def redact_text(text: str) -> str:
    """Tokens and assertions are credentials: evidence keeps only their algorithm."""
    return _BEARER.sub(r"\1[redacted]", _JWT.sub(_jwt_summary, text))


def redact_headers(headers: httpx.Headers | dict[str, str]) -> dict[str, str]:
    shown = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _SECRET_HEADERS:
            scheme = value.split(" ", 1)[0] if " " in value else ""
            shown[lower] = f"{scheme} [redacted]".strip()
        else:
            shown[lower] = redact_text(value)
    return shown


def redact_body(body: bytes, content_type: str) -> str:
    text = body.decode("utf-8", errors="replace")
    if "x-www-form-urlencoded" in content_type:
        fields = [(k, "[redacted]" if k in _SECRET_FIELDS else v) for k, v in parse_qsl(text)]
        text = urlencode(fields)
    elif "json" in content_type and '"access_token"' in text:
        try:
            document = json.loads(text)
            if isinstance(document, dict):
                text = json.dumps(
                    {k: "[redacted]" if k in _SECRET_FIELDS else v for k, v in document.items()}
                )
        except ValueError:
            pass  # not JSON after all: the JWT pattern below still applies
    text = redact_text(text)
    if len(text) > BODY_LIMIT:
        return text[:BODY_LIMIT] + f"... [{len(text) - BODY_LIMIT} more characters]"
    return text


class TargetUnreachableError(Exception):
    """The system under test did not answer at all."""


class RecordingClient:
    """httpx, with each exchange appended to the current test's evidence."""

    def __init__(self, base_url: str, *, timeout: float = 20.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, follow_redirects=False)
        self.evidence: Evidence | None = None
        self.seen: list[httpx.Response] = []  # every answer of the run, for checks across tests

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            request = self._http.build_request(method, url, **kwargs)
            self._record(request, None, f"{type(exc).__name__}: {exc}")
            raise TargetUnreachableError(f"{method} {request.url}: {type(exc).__name__}: {exc}") from exc
        self._record(response.request, response, None)
        self.seen.append(response)
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def _record(self, request: httpx.Request, response: httpx.Response | None, error: str | None) -> None:
        if self.evidence is None:
            return
        request_type = request.headers.get("content-type", "")
        self.evidence.exchanges.append(
            Exchange(
                direction="sent",
                method=request.method,
                url=str(request.url),
                request_headers=redact_headers(request.headers),
                request_body=redact_body(request.content, request_type),
                status=None if response is None else response.status_code,
                response_headers={} if response is None else redact_headers(response.headers),
                response_body=""
                if response is None
                else redact_body(response.content, response.headers.get("content-type", "")),
                error=error,
            )
        )

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class IncomingRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/fhir+json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls, status: int, document: Any, content_type: str = "application/fhir+json", **headers: str
    ) -> Answer:
        extra = tuple((name.replace("_", "-"), value) for name, value in headers.items())
        return cls(status, json.dumps(document).encode(), content_type, extra)


Handler = Callable[[IncomingRequest], Answer]


def received_exchange(request: IncomingRequest, answer: Answer, url: str) -> Exchange:
    """Evidence of a request the system under test made to one of the suite's endpoints."""
    return Exchange(
        direction="received",
        method=request.method,
        url=url,
        request_headers=redact_headers(request.headers),
        request_body=redact_body(request.body, request.headers.get("content-type", "")),
        status=answer.status,
        response_headers={"content-type": answer.content_type},
        response_body=redact_body(answer.body, answer.content_type),
    )


class LocalEndpoint:
    """A threaded HTTP/1.1 server on loopback that hands each request to `handler`."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        endpoint = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                incoming = IncomingRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                answer = endpoint.handler(incoming)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the suite reports what it saw as evidence instead

        self.handler = handler
        self._server = ThreadingHTTPServer((host, port), _RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="conformance-endpoint", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> LocalEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
