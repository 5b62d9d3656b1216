"""Posting notifications to subscribers' rest-hook endpoints (the channel around it: `rest_hook`).

A notification is POSTed to the subscriber's endpoint: the Task snapshot (or an empty body), the
subscriber's own headers, `Content-Type: application/fhir+json`, `X-Request-ID` (the notification's
id, the same on every retry, so a subscriber can drop a repeat) and `X-Signature` (a detached JWS of
the body; see `signature`). A 2xx answer is delivery; anything else is retried with the dispatcher's
backoff. After `error_after` failures in a row the subscription is put in `error` and its queued
notifications die with it, so a subscriber never sees a later state after a lost one: it
resubscribes and reads the current state instead. Any delivery resets the count.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import anyio.to_thread
import httpx

from adapters.base import retry_after_seconds
from auth.signing import SigningKeys
from gateway import __version__
from gateway.notify.endpoints import EndpointPolicy, EndpointRefusedError, PinnedTransport, pinned
from gateway.notify.signature import SIGNATURE_HEADER, sign_detached
from gateway.notify.subscription import FHIR_JSON
from gateway.store.outbox import NOTIFICATION_KEY_PREFIX, ClaimedNotification


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: bool
    error: str | None = None
    retry_after: float | None = None


def notification_id(notification: ClaimedNotification) -> str:
    """The notification's own id, sent as X-Request-ID on every attempt."""
    return notification.idempotency_key.removeprefix(NOTIFICATION_KEY_PREFIX)


# The same words for every failure short of an HTTP answer: a subscriber learns nothing of the
# gateway's network (which address was refused, whether a port is open) from its subscription.
UNREACHABLE = "the endpoint could not be reached (no HTTP answer)"


class RestHookSender:
    """Posts notifications with one shared HTTP client; signs each body with the gateway's key.

    Before every send the endpoint's host is resolved and every address checked (`endpoints`); the
    connection goes to a checked address, and redirects are not followed.
    """

    def __init__(
        self,
        signing_keys: SigningKeys,
        *,
        timeout_seconds: float,
        endpoints: EndpointPolicy,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._signing_keys = signing_keys
        self._endpoints = endpoints
        self._http = httpx.AsyncClient(
            transport=PinnedTransport(ssl_context),
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            headers={"User-Agent": f"homecare-gateway/{__version__}"},
        )

    def headers_for(self, notification: ClaimedNotification, body: bytes) -> list[tuple[str, str]]:
        headers = []
        for header in notification.headers:
            name, _, value = header.partition(":")
            headers.append((name.strip(), value.strip()))
        headers += [
            ("Content-Type", FHIR_JSON),
            ("X-Request-ID", notification_id(notification)),
            (SIGNATURE_HEADER, sign_detached(body, self._signing_keys.signing_key)),
        ]
        return headers

    async def post(self, notification: ClaimedNotification) -> DeliveryResult:
        body = notification.payload or b""
        try:
            addresses = await anyio.to_thread.run_sync(self._endpoints.check, notification.endpoint)
        except EndpointRefusedError:
            return DeliveryResult(delivered=False, error=UNREACHABLE)
        try:
            with pinned(notification.endpoint, addresses[0]):
                # Streamed and never read: a subscriber's answer is its status code, whatever its size.
                async with self._http.stream(
                    "POST", notification.endpoint, content=body, headers=self.headers_for(notification, body)
                ) as response:
                    if response.is_success:
                        return DeliveryResult(delivered=True)
                    return DeliveryResult(
                        delivered=False,
                        error=f"the endpoint answered HTTP {response.status_code}",
                        retry_after=retry_after_seconds(response.headers.get("retry-after")),
                    )
        except httpx.HTTPError:
            # Never the exception's text: it may name addresses, or repeat the URL and a token in it.
            return DeliveryResult(delivered=False, error=UNREACHABLE)

    async def aclose(self) -> None:
        await self._http.aclose()
