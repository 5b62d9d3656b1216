"""Where the gateway may post notifications: subscriber endpoints, checked against request forgery.

A subscriber names a URL; the gateway must never be made to connect to its own network through it.
So the host is resolved when the subscription is created and again before every send, and every
address it resolves to must be global unicast (loopback too, in development, only when
`HOMECARE_ALLOW_LOOPBACK_SUBSCRIBERS` turns it on). The send then connects to the address that was
checked, never to a second lookup of the name (which a rebinding DNS server could answer
differently): `PinnedTransport`'s network backend only dials addresses pinned by the check, while
TLS still verifies the certificate against the name (SNI and hostname come from the URL). Hosts
written as numbers in any form but the dotted quad (`2130706433`, `0x7f000001`, `127.1`) or with a
trailing dot are refused before resolving. Refusals say nothing of the network: the same words for
a name that does not resolve and one that resolves to a private address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses the name resolves to (raises OSError when it does not resolve).
Resolver = Callable[[str, int], Sequence[str]]

MAX_ENDPOINT_LENGTH = 2000
NOT_ALLOWED = "The endpoint's host must resolve to public internet addresses only"
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


class EndpointRefusedError(Exception):
    """The endpoint may not be posted to; `str()` is fit to show the subscriber."""


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (DNS, hosts file), as address strings."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class StaticResolver:
    """A resolver with fixed answers, for tests and the demo: IP literals resolve to themselves,
    names in `names` to their addresses, anything else not at all."""

    names: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __call__(self, host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.names[host])


def address_allowed(address: IPAddress, *, allow_loopback: bool) -> bool:
    """Global unicast only (and loopback when allowed); an IPv6 address that embeds an IPv4 one
    (mapped, 6to4, Teredo) is judged by that too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address_allowed(address.ipv4_mapped, allow_loopback=allow_loopback)
        if address.is_loopback:
            return allow_loopback
        embedded = [address.sixtofour] if address.sixtofour else []
        embedded += list(address.teredo or ())
        if any(not address_allowed(inner, allow_loopback=False) for inner in embedded):
            return False
        return address in _GLOBAL_UNICAST_V6 and address.is_global and not address.is_multicast
    if address.is_loopback:
        return allow_loopback
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _numeric_but_not_canonical(host: str) -> bool:
    """`2130706433`, `0x7f000001`, `017700000001`, `127.1`, `127.0.0.1.`: numbers the resolver turns
    into an address, written any way but the plain dotted quad."""
    labels = host.split(".")
    if not all(_NUMERIC_LABEL.fullmatch(label) for label in labels if label):
        return False
    try:
        return str(ipaddress.IPv4Address(host)) != host
    except ValueError:
        return True


@dataclass(frozen=True)
class EndpointPolicy:
    """Which endpoints a notification may go to, and the resolver that says where they are."""

    allow_loopback: bool = False
    resolver: Resolver = system_resolver

    def url_problem(self, url: str) -> str | None:
        """What is wrong with the URL itself, or None (no lookup is made)."""
        if len(url) > MAX_ENDPOINT_LENGTH:
            return f"The endpoint is longer than {MAX_ENDPOINT_LENGTH} characters"
        if any(character.isspace() or ord(character) < 0x20 for character in url):
            return "The endpoint contains spaces or control characters"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "The endpoint is not a valid URL"
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("https", "http") or not host:
            return "The endpoint must be an absolute https:// URL"
        if parts.username is not None or parts.password is not None:
            return "The endpoint may not carry credentials: send them in channel.header"
        if parts.fragment:
            return "The endpoint may not have a #fragment"
        if port == 0:
            return "The endpoint's port is not valid"
        if host.endswith(".") or _numeric_but_not_canonical(host):
            return "Write the endpoint's host as a name (no trailing dot) or an IP address in standard form"
        if parts.scheme == "http" and not self.allow_loopback:
            return "The endpoint must use https (plain http only to loopback, when the gateway allows it)"
        return None

    def check(self, url: str) -> list[str]:
        """Every address `url`'s host resolves to, each allowed; else EndpointRefusedError. Plain http is
        allowed only when every address is loopback."""
        problem = self.url_problem(url)
        if problem is not None:
            raise EndpointRefusedError(problem)
        try:
            host, port = _host_and_port(url)
            found = [ipaddress.ip_address(text.split("%", 1)[0]) for text in self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError, httpx.InvalidURL) as exc:
            raise EndpointRefusedError(NOT_ALLOWED) from exc
        if not found or not all(address_allowed(a, allow_loopback=self.allow_loopback) for a in found):
            raise EndpointRefusedError(NOT_ALLOWED)
        if url.lower().startswith("http:") and not all(address.is_loopback for address in found):
            raise EndpointRefusedError("The endpoint must use https (plain http only to loopback)")
        return [str(address) for address in found]


# (host, port) -> the checked address to dial, for the sends of the current task only.
_PINNED: ContextVar[Mapping[tuple[str, int], str] | None] = ContextVar(
    "pinned_endpoint_addresses", default=None
)


def _host_and_port(url: str) -> tuple[str, int]:
    """The host as the HTTP client will dial it (IDNA-encoded, lower case) and the port."""
    parsed = httpx.URL(url)
    return parsed.raw_host.decode("ascii").lower(), parsed.port or (443 if parsed.scheme == "https" else 80)


@contextlib.contextmanager
def pinned(url: str, address: str) -> Iterator[None]:
    """While in this block, connections to `url`'s host and port go to `address` (and nowhere else)."""
    token = _PINNED.set({_host_and_port(url): address})
    try:
        yield
    finally:
        _PINNED.reset(token)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials only the address a check pinned for the host: no lookup of its own, ever."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = (_PINNED.get() or {}).get((host.strip("[]").lower(), port))
        if address is None:
            raise httpcore.ConnectError("no checked address for this host")
        return await self._backend.connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not endpoints")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:  # httpcore's response stream (an async iterable)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except httpcore.TimeoutException as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over httpcore whose connections go only to pinned, checked addresses."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            network_backend=_PinnedBackend(),
            max_connections=100,
            keepalive_expiry=5.0,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except httpcore.TimeoutException as exc:
            raise httpx.TimeoutException(str(exc), request=request) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise httpx.TransportError(str(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
