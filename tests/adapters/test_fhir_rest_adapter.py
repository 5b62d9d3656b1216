"""The `fhir-rest` adapter against the provider simulator, over real sockets."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from adapters.base import AdapterTransportError, SendOutcome
from adapters.fhir_rest.adapter import retry_after_seconds
from adapters.fhir_rest.simulator import SimulatorServer
from fhir_profiles.builder import PrescriptionMessageBuilder, break_message
from tests.adapters.support import (
    adapter_for,
    cancel_message,
    item_ids_of,
    order_for,
    short_form_of,
    wait_for,
)

pytestmark = pytest.mark.anyio


async def test_order_bytes_reach_the_provider_unchanged_with_the_three_headers(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    message = builder.build(items=2)
    # Indented, with a trailing newline and a non-ASCII name: a re-serialisation would differ.
    message["entry"][1]["resource"]["note"] = [{"text": "Lieferung für Zoë, bitte klingeln"}]
    body = orjson.dumps(message, option=orjson.OPT_INDENT_2) + b"\n"
    order = order_for(message, body=body)

    async with adapter_for(base_url=provider.base_url) as adapter:
        result = await adapter.send(order, idempotency_key="order-1-new")

    assert result.outcome is SendOutcome.DELIVERED
    assert result.detail == "HTTP 200 OK"
    accepted = provider.order(order.short_form_id)
    assert accepted is not None
    assert accepted.message == body
    [receipt] = provider.receipts()
    assert receipt.idempotency_key == "order-1-new"
    assert receipt.request_id == order.request_id
    assert receipt.correlation_id == order.correlation_id
    assert receipt.body_sha256 == hashlib.sha256(body).hexdigest()


async def test_a_repeated_send_is_delivered_again_but_accepted_once(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    order = order_for(builder.build())
    async with adapter_for(base_url=provider.base_url) as adapter:
        first = await adapter.send(order, idempotency_key="key-1")
        again = await adapter.send(order, idempotency_key="key-1")

    assert first.is_delivered and again.is_delivered
    assert len(provider.orders()) == 1
    assert provider.receipt_counts() == {"key-1": 2}
    assert [r.outcome for r in provider.receipts()] == ["accepted", "duplicate"]


async def test_provider_refusal_is_a_rejection_with_the_providers_reason(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    provider.configure(reject_rate=1.0)
    async with adapter_for(base_url=provider.base_url) as adapter:
        result = await adapter.send(order_for(builder.build()), idempotency_key="refused-1")

    assert result.outcome is SendOutcome.REJECTED
    assert result.code in {"out-of-stock", "patient-not-registered", "service-not-commissioned"}
    assert result.reason in {
        "Out of stock: the medicine cannot be supplied at present",
        "Patient not registered with this provider",
        "This provider is not commissioned to supply this service",
    }
    assert provider.orders() == []


async def test_an_order_for_another_provider_is_rejected(provider: SimulatorServer) -> None:
    message = PrescriptionMessageBuilder(seed=4, performer_ods="VNFKT").build()
    async with adapter_for(base_url=provider.base_url) as adapter:
        result = await adapter.send(order_for(message, provider_ods="VNFKT"), idempotency_key="k")

    assert result.outcome is SendOutcome.REJECTED
    assert result.code == "wrong-provider"
    assert result.reason == "The order is addressed to another homecare provider. This is VNCEL"


async def test_an_invalid_message_is_rejected_with_the_validation_problem(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    broken = break_message(builder.build(), "bad-nhs-check-digit")
    async with adapter_for(base_url=provider.base_url) as adapter:
        result = await adapter.send(order_for(broken), idempotency_key="k")

    assert result.outcome is SendOutcome.REJECTED
    assert result.code == "INVALID_CHECK_DIGIT"
    assert result.reason == "The NHS number fails its Modulus 11 check"
    assert [r.status_code for r in provider.receipts()] == [400]


async def test_the_same_key_with_another_message_is_rejected_as_a_conflict(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    async with adapter_for(base_url=provider.base_url) as adapter:
        assert (await adapter.send(order_for(builder.build()), idempotency_key="k")).is_delivered
        result = await adapter.send(order_for(builder.build()), idempotency_key="k")

    assert result.outcome is SendOutcome.REJECTED
    assert result.code == "idempotency-key-reused"
    assert len(provider.orders()) == 1


async def test_a_static_bearer_token_is_sent(builder: PrescriptionMessageBuilder) -> None:
    with SimulatorServer(required_token="provider-token-1", lifecycle=False) as provider:
        async with adapter_for(base_url=provider.base_url, bearer_token="provider-token-1") as adapter:
            assert (await adapter.send(order_for(builder.build()), idempotency_key="k")).is_delivered
            assert (await adapter.check()).ok


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_a_missing_or_wrong_token_is_a_credentials_problem(
    builder: PrescriptionMessageBuilder, token: str | None
) -> None:
    with SimulatorServer(required_token="provider-token-1", lifecycle=False) as provider:
        async with adapter_for(base_url=provider.base_url, bearer_token=token) as adapter:
            with pytest.raises(AdapterTransportError) as caught:
                await adapter.send(order_for(builder.build()), idempotency_key="k")

    assert caught.value.credentials_problem
    assert caught.value.status_code == 401
    assert provider.orders() == []


async def test_forbidden_is_a_credentials_problem(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    provider.configure(forbidden=True)
    async with adapter_for(base_url=provider.base_url) as adapter:
        with pytest.raises(AdapterTransportError) as caught:
            await adapter.send(order_for(builder.build()), idempotency_key="k")

    assert caught.value.credentials_problem
    assert caught.value.status_code == 403
    assert "403" in caught.value.reason


async def test_client_credentials_tokens_are_fetched_once_and_reused(
    builder: PrescriptionMessageBuilder,
) -> None:
    with SimulatorServer(client_id="gateway", client_secret="s3cret", lifecycle=False) as provider:
        settings = {
            "base_url": provider.base_url,
            "token_url": f"{provider.url}/oauth2/token",
            "client_id": "gateway",
            "client_secret": "s3cret",
        }
        async with adapter_for(**settings) as adapter:
            for number in range(3):
                result = await adapter.send(order_for(builder.build()), idempotency_key=f"k{number}")
                assert result.is_delivered

        assert provider.tokens_issued() == 1
        assert len(provider.orders()) == 3


async def test_a_refused_client_secret_is_a_credentials_problem(builder: PrescriptionMessageBuilder) -> None:
    with SimulatorServer(client_id="gateway", client_secret="s3cret", lifecycle=False) as provider:
        settings = {
            "base_url": provider.base_url,
            "token_url": f"{provider.url}/oauth2/token",
            "client_id": "gateway",
            "client_secret": "not-the-secret",
        }
        async with adapter_for(**settings) as adapter:
            with pytest.raises(AdapterTransportError) as caught:
                await adapter.send(order_for(builder.build()), idempotency_key="k")
            health = await adapter.check()

    assert caught.value.credentials_problem
    assert "invalid_client" in caught.value.reason
    assert not health.ok
    assert provider.receipts() == []


async def test_a_throttled_send_is_retryable_after_the_providers_retry_after(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    provider.configure(throttle_next=1, retry_after_seconds=7)
    order = order_for(builder.build())
    async with adapter_for(base_url=provider.base_url) as adapter:
        with pytest.raises(AdapterTransportError) as caught:
            await adapter.send(order, idempotency_key="k")
        assert (await adapter.send(order, idempotency_key="k")).is_delivered

    assert caught.value.status_code == 429
    assert caught.value.retry_after == 7.0
    assert not caught.value.credentials_problem
    assert [r.outcome for r in provider.receipts()] == ["throttled", "accepted"]


async def test_a_provider_server_error_is_retryable(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    provider.configure(fail_next=2)
    order = order_for(builder.build())
    async with adapter_for(base_url=provider.base_url) as adapter:
        for _ in range(2):
            with pytest.raises(AdapterTransportError) as caught:
                await adapter.send(order, idempotency_key="k")
            assert caught.value.status_code == 500
            assert not caught.value.credentials_problem
        assert (await adapter.send(order, idempotency_key="k")).is_delivered

    assert provider.receipt_counts() == {"k": 3}
    assert len(provider.orders()) == 1


async def test_a_provider_that_is_down_is_retryable(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    provider.configure(down=True)
    async with adapter_for(base_url=provider.base_url) as adapter:
        with pytest.raises(AdapterTransportError) as caught:
            await adapter.send(order_for(builder.build()), idempotency_key="k")
        health = await adapter.check()

    assert caught.value.status_code == 503
    assert caught.value.retry_after == 5.0
    assert not health.ok


async def test_a_closed_port_is_retryable(builder: PrescriptionMessageBuilder) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    async with adapter_for(base_url=f"http://127.0.0.1:{closed_port}/fhir") as adapter:
        with pytest.raises(AdapterTransportError) as caught:
            await adapter.send(order_for(builder.build()), idempotency_key="k")
        health = await adapter.check()

    assert "unreachable" in caught.value.reason
    assert caught.value.status_code is None
    assert not caught.value.credentials_problem
    assert not health.ok


async def test_a_slow_provider_times_out_and_the_retry_does_not_create_a_second_order(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    provider.configure(delay_seconds=1.5)
    order = order_for(builder.build())
    async with adapter_for(base_url=provider.base_url, timeout_seconds=0.3) as adapter:
        with pytest.raises(AdapterTransportError) as caught:
            await adapter.send(order, idempotency_key="slow-1")
        assert "did not answer within 0.3 s" in caught.value.reason

        # The provider finishes taking the first attempt after the gateway gave up on it.
        wait_for(lambda: provider.order(order.short_form_id), what="the slow order to be taken")
        provider.configure(delay_seconds=0)
        assert (await adapter.send(order, idempotency_key="slow-1")).is_delivered

    assert len(provider.orders()) == 1
    assert provider.receipt_counts() == {"slow-1": 2}
    assert [r.outcome for r in provider.receipts()] == ["accepted", "duplicate"]


async def test_check_finds_the_providers_capability_statement(provider: SimulatorServer) -> None:
    async with adapter_for(base_url=provider.base_url) as adapter:
        health = await adapter.check()
    assert health.ok, health.detail


async def test_a_cancel_is_forwarded_and_stops_the_items_not_yet_dispensed(
    builder: PrescriptionMessageBuilder,
) -> None:
    message = builder.build(items=2)
    first, second = item_ids_of(message)
    with SimulatorServer(step_delay_seconds=0.01, step_delays={"in-preparation": 60}) as provider:
        async with adapter_for(base_url=provider.base_url) as adapter:
            assert (await adapter.send(order_for(message), idempotency_key="new")).is_delivered
            wait_for(
                lambda: provider.order(short_form_of(message)).item_statuses[first] == "accepted",
                what="the order to be accepted",
            )
            cancel = order_for(cancel_message(message, items=[first]), kind="cancel")
            result = await adapter.send(cancel, idempotency_key="cancel")

        assert result.is_delivered
        statuses = provider.order(short_form_of(message)).item_statuses
        assert statuses == {first: "cancelled", second: "accepted"}
        assert [(r.item_id, r.status) for r in provider.status_log()][-1] == (first, "cancelled")


async def test_a_cancel_after_dispensing_is_rejected_as_too_late(
    provider: SimulatorServer, builder: PrescriptionMessageBuilder
) -> None:
    message = builder.build(items=1)
    async with adapter_for(base_url=provider.base_url) as adapter:
        assert (await adapter.send(order_for(message), idempotency_key="new")).is_delivered
        wait_for(
            lambda: provider.order(short_form_of(message)).lifecycle_done,
            what="the order to be delivered",
        )
        result = await adapter.send(order_for(cancel_message(message), kind="cancel"), idempotency_key="c")

    assert result.outcome is SendOutcome.REJECTED
    assert result.code == "too-late-to-cancel"


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("Mon, 23 Nov 2026 09:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Mon, 23 Nov 2026 08:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@contextmanager
def answering(status: int) -> Iterator[str]:
    """A provider endpoint on a real socket that answers every POST with `status` (and an
    OperationOutcome), as a proxy or a provider's own server might: its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = orjson.dumps(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "processing", "diagnostics": f"answer {status}"}],
                }
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_a_request_timeout_throttle_or_server_error_is_retried_not_a_rejection(
    builder: PrescriptionMessageBuilder, status: int
) -> None:
    with answering(status) as base_url:
        async with adapter_for(base_url=base_url) as adapter:
            with pytest.raises(AdapterTransportError) as caught:
                await adapter.send(order_for(builder.build()), idempotency_key="k")
    assert caught.value.status_code == status
    assert not caught.value.credentials_problem


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_any_other_client_error_is_a_rejection_with_the_providers_reason(
    builder: PrescriptionMessageBuilder, status: int
) -> None:
    with answering(status) as base_url:
        async with adapter_for(base_url=base_url) as adapter:
            result = await adapter.send(order_for(builder.build()), idempotency_key="k")
    assert result.outcome is SendOutcome.REJECTED
    assert result.reason == f"answer {status}"
