"""Subscriber endpoints cannot point the gateway at its own network (request forgery).

A listener on loopback records every connection made to it. In production none may arrive, for any
way of writing a loopback address, whether the subscription is being created or (stored before the
rules changed, or behind a name that resolves anew) its notification is being sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from auth.signing import SigningKeys, ensure_signing_key
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.notify.delivery import UNREACHABLE, DeliveryResult, RestHookSender
from gateway.notify.endpoints import NOT_ALLOWED, EndpointPolicy, StaticResolver, address_allowed
from gateway.settings import Environment, Settings
from gateway.store.db import Database
from gateway.store.outbox import ClaimedNotification
from tests.support import PUBLIC_BASE_URL, RunningServer, Tenant, free_port, http_as

FHIR_JSON = {"Content-Type": "application/fhir+json"}


class ConnectionRecorder:
    """A TCP listener on a loopback address that counts connections and answers `answer` to each."""

    def __init__(
        self, host: str = "127.0.0.1", answer: bytes = b"", tls: ssl.SSLContext | None = None
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.answer = answer
        self.tls = tls
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def connections(self) -> int:
        return len(self.requests)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    if self.tls is not None:
                        connection = self.tls.wrap_socket(connection, server_side=True)
                    self.requests.append(connection.recv(65536))
                    if self.answer:
                        connection.sendall(self.answer)
                except OSError:
                    self.requests.append(b"")

    def __enter__(self) -> ConnectionRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def loopback_forms(port: int) -> list[str]:
    """Loopback, written every way a resolver or an HTTP client may take it."""
    return [
        f"https://2130706433:{port}/hook",
        f"https://0x7f000001:{port}/hook",
        f"https://017700000001:{port}/hook",
        f"https://127.1:{port}/hook",
        f"https://localhost.:{port}/hook",
        f"https://127.0.0.1.:{port}/hook",
        f"https://[::127.0.0.1]:{port}/hook",
        f"https://[::ffff:127.0.0.1]:{port}/hook",
        f"https://localhost:{port}/hook",
        f"https://127.0.0.1:{port}/hook",
        f"https://[::1]:{port}/hook",
        f"http://127.0.0.1:{port}/hook",
        f"https://0.0.0.0:{port}/hook",
        f"https://0:{port}/hook",
    ]


@pytest.fixture
def recorder() -> Iterator[ConnectionRecorder]:
    with ConnectionRecorder() as recording:
        yield recording


@pytest.fixture
def production_server(database: Database, db: Database, tmp_path: Path) -> Iterator[RunningServer]:
    """The gateway in production mode, resolving names as the operating system does."""
    keys = tmp_path / "keys"
    ensure_signing_key(keys, now=system_clock())
    settings = Settings(
        environment=Environment.PRODUCTION,
        data_dir=tmp_path,
        signing_keys_dir=keys,
        public_base_url=PUBLIC_BASE_URL,
        audit_seal_seconds=0,
        run_dispatcher=False,
    )
    with RunningServer(create_app(settings, db=database)) as running:
        yield running


def test_production_refuses_every_spelling_of_loopback_and_never_connects(
    production_server: RunningServer, tenants: dict[str, Tenant], recorder: ConnectionRecorder
) -> None:
    with http_as(production_server, tenants["trust-rba"]) as rba:
        for endpoint in loopback_forms(recorder.port):
            subscription = {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "probe",
                "criteria": "Task",
                "channel": {"type": "rest-hook", "endpoint": endpoint},
            }
            refused = rba.post("/fhir/Subscription", content=orjson.dumps(subscription), headers=FHIR_JSON)
            assert refused.status_code == 400, endpoint
            assert [i["expression"] for i in refused.json()["issue"]] == [["Subscription.channel.endpoint"]]
    assert recorder.connections == 0


def _notification(endpoint: str) -> ClaimedNotification:
    return ClaimedNotification(
        outbox_id=1,
        subscription_id="s-1",
        prescription_id="p-1",
        idempotency_key="notification:n-1",
        attempts=0,
        payload=b"{}",
        endpoint=endpoint,
        headers=(),
        subscription_status="active",
    )


def _send(sender_policy: EndpointPolicy, endpoint: str, keys: SigningKeys) -> DeliveryResult:
    async def post() -> DeliveryResult:
        sender = RestHookSender(keys, timeout_seconds=2, endpoints=sender_policy)
        try:
            return await sender.post(_notification(endpoint))
        finally:
            await sender.aclose()

    return asyncio.run(post())


@pytest.fixture
def keys(tmp_path: Path) -> SigningKeys:
    ensure_signing_key(tmp_path / "keys", now=system_clock())
    return SigningKeys(tmp_path / "keys")


def test_a_send_in_production_never_connects_to_loopback_however_written(
    recorder: ConnectionRecorder, keys: SigningKeys
) -> None:
    for endpoint in loopback_forms(recorder.port):
        result = _send(EndpointPolicy(), endpoint, keys)
        assert result == DeliveryResult(delivered=False, error=UNREACHABLE), endpoint
    assert recorder.connections == 0


def test_a_name_that_resolves_anew_to_loopback_at_send_time_is_not_followed(
    recorder: ConnectionRecorder, keys: SigningKeys
) -> None:
    """DNS rebinding: public when the subscription was made, loopback when the notification goes."""
    answers = iter([["8.8.8.8"], ["127.0.0.1"]])
    policy = EndpointPolicy(resolver=lambda host, port: next(answers))
    endpoint = f"https://rebinding.example:{recorder.port}/hook"
    assert policy.check(endpoint) == ["8.8.8.8"]
    assert _send(policy, endpoint, keys) == DeliveryResult(delivered=False, error=UNREACHABLE)
    assert recorder.connections == 0


def test_one_private_address_among_public_ones_is_refused() -> None:
    policy = EndpointPolicy(resolver=StaticResolver({"mixed.example": ["8.8.8.8", "10.0.0.5"]}))
    with pytest.raises(Exception, match=NOT_ALLOWED):
        policy.check("https://mixed.example/hook")
    with pytest.raises(Exception, match=NOT_ALLOWED):
        EndpointPolicy(resolver=StaticResolver()).check("https://does-not-resolve.example/hook")


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "fc00::1",
        "fe80::1",
        "::",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "64:ff9b::7f00:1",
        "ff02::1",
        "::7f00:1",
    ],
)
def test_only_global_unicast_addresses_are_allowed(address: str) -> None:
    assert not address_allowed(ipaddress.ip_address(address), allow_loopback=True)


def test_development_reaches_loopback_only_when_allowed_and_dials_the_checked_address(
    keys: SigningKeys,
) -> None:
    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with ConnectionRecorder(answer=answer) as endpoint:
        # No DNS knows this name: the connection can only go to the address the check pinned.
        names = StaticResolver({"hook.test": ["127.0.0.1"]})
        url = f"http://hook.test:{endpoint.port}/hook"
        refused = _send(EndpointPolicy(resolver=names), url, keys)
        assert refused == DeliveryResult(delivered=False, error=UNREACHABLE)
        assert endpoint.connections == 0
        delivered = _send(EndpointPolicy(allow_loopback=True, resolver=names), url, keys)
        assert delivered.delivered
        (request,) = endpoint.requests
        assert f"host: hook.test:{endpoint.port}".encode() in request.lower()


def test_a_redirect_is_not_followed(keys: SigningKeys, recorder: ConnectionRecorder) -> None:
    elsewhere = f"http://127.0.0.1:{recorder.port}/internal"
    answer = f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\n\r\n".encode()
    with ConnectionRecorder(answer=answer) as endpoint:
        result = _send(EndpointPolicy(allow_loopback=True), f"http://127.0.0.1:{endpoint.port}/hook", keys)
    assert result.error == "the endpoint answered HTTP 307"
    assert recorder.connections == 0


def test_production_refuses_to_start_with_loopback_subscribers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HOMECARE_ALLOW_LOOPBACK_SUBSCRIBERS"):
        Settings(
            environment=Environment.PRODUCTION,
            signing_keys_dir=tmp_path,
            public_base_url="https://gateway.example",
            allow_loopback_subscribers=True,
        )


def test_the_default_is_no_loopback_in_development_too() -> None:
    assert Settings().allow_loopback_subscribers is False


def test_an_http_client_error_text_never_reaches_the_subscriber(keys: SigningKeys) -> None:
    # Nobody listens on this port: the failure is the same words as a refused address.
    result = _send(EndpointPolicy(allow_loopback=True), f"http://127.0.0.1:{free_port()}/hook", keys)
    assert result == DeliveryResult(delivered=False, error=UNREACHABLE)


def _certificate_for(name: str, folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (its own trust anchor) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certificate_file, key_file


@pytest.mark.parametrize(("certificate_name", "delivered"), [("hook.test", True), ("other.test", False)])
def test_tls_checks_the_certificate_against_the_name_not_the_checked_address(
    keys: SigningKeys, tmp_path: Path, certificate_name: str, delivered: bool
) -> None:
    certificate, key = _certificate_for(certificate_name, tmp_path)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(certificate, key)
    trusting = ssl.create_default_context(cafile=str(certificate))
    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with ConnectionRecorder(answer=answer, tls=serving) as endpoint:
        policy = EndpointPolicy(allow_loopback=True, resolver=StaticResolver({"hook.test": ["127.0.0.1"]}))

        async def post() -> DeliveryResult:
            sender = RestHookSender(keys, timeout_seconds=2, endpoints=policy, ssl_context=trusting)
            try:
                return await sender.post(_notification(f"https://hook.test:{endpoint.port}/hook"))
            finally:
                await sender.aclose()

        result = asyncio.run(post())
    assert result.delivered is delivered, result
