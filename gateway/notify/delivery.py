"""Delivering notifications over rest-hook channels, and recording what became of each.

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
from datetime import datetime
from enum import StrEnum

import anyio.to_thread
import httpx
from sqlalchemy import Connection, select, update

from auth.signing import SigningKeys
from gateway import __version__
from gateway.dispatch.outbox import DEAD, DONE, PENDING, ClaimedNotification, release_claim
from gateway.notify.endpoints import EndpointPolicy, EndpointRefusedError, PinnedTransport, pinned
from gateway.notify.service import NOTIFICATION_KEY_PREFIX, kill_pending_notifications
from gateway.notify.signature import SIGNATURE_HEADER, sign_detached
from gateway.notify.subscription import FHIR_JSON
from gateway.store.models import Subscription
from gateway.store.subscriptions import ACTIVE, ERROR

_subscription = Subscription.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: bool
    error: str | None = None
    retry_after: float | None = None


def notification_id(notification: ClaimedNotification) -> str:
    """The notification's own id, sent as X-Request-ID on every attempt."""
    return notification.idempotency_key.removeprefix(NOTIFICATION_KEY_PREFIX)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


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
                        retry_after=_retry_after(response),
                    )
        except httpx.HTTPError:
            # Never the exception's text: it may name addresses, or repeat the URL and a token in it.
            return DeliveryResult(delivered=False, error=UNREACHABLE)

    async def aclose(self) -> None:
        await self._http.aclose()


def record_notified(
    connection: Connection, claimed: ClaimedNotification, *, owner: str, now: datetime
) -> bool:
    """Delivered: the row is done and the subscription's failure count starts again."""
    if not release_claim(connection, owner, claimed.outbox_id, now=now, state=DONE, last_error=None):
        return False
    connection.execute(
        update(_subscription)
        .where(_subscription.c.id == claimed.subscription_id, _subscription.c.failure_count != 0)
        .values(failure_count=0)
    )
    return True


class FailureOutcome(StrEnum):
    RETRY = "retry"
    SUBSCRIPTION_ERROR = "error"  # this failure put the subscription in error; its notifications died
    DROPPED = "dropped"  # the subscription was no longer active: nothing was sent
    LEASE_LOST = "lease-lost"


def record_dropped(
    connection: Connection, claimed: ClaimedNotification, *, owner: str, now: datetime
) -> bool:
    """A notification whose subscription was turned off or failed before it went: dead, unsent."""
    return release_claim(
        connection,
        owner,
        claimed.outbox_id,
        now=now,
        state=DEAD,
        last_error=f"not sent: the subscription is {claimed.subscription_status}",
    )


def record_not_notified(
    connection: Connection,
    claimed: ClaimedNotification,
    *,
    owner: str,
    now: datetime,
    error: str,
    retry_at: datetime | None,
    error_after: int,
) -> FailureOutcome:
    """A failed attempt: due again at `retry_at`, unless this was the subscription's `error_after`th
    failure in a row (or the retry budget is spent), which puts the subscription in error."""
    failures = (
        connection.execute(
            select(_subscription.c.failure_count).where(_subscription.c.id == claimed.subscription_id)
        ).scalar_one()
        + 1
    )
    give_up = retry_at is None or failures >= error_after
    values: dict[str, object] = {"attempts": claimed.attempts + 1, "last_error": error[:500]}
    values.update({"state": DEAD} if give_up else {"state": PENDING, "due_at": retry_at})
    if not release_claim(connection, owner, claimed.outbox_id, now=now, **values):
        return FailureOutcome.LEASE_LOST
    subscription_values: dict[str, object] = {"failure_count": failures}
    if give_up:
        subscription_values.update(
            status=ERROR,
            error=f"{failures} deliveries in a row failed; the last: {error}"[:500],
            updated_at=now,
        )
    connection.execute(
        update(_subscription)
        .where(_subscription.c.id == claimed.subscription_id, _subscription.c.status == ACTIVE)
        .values(**subscription_values)
    )
    if give_up:
        kill_pending_notifications(
            connection,
            claimed.subscription_id,
            now=now,
            reason="not sent: the subscription went into error",
        )
    return FailureOutcome.SUBSCRIPTION_ERROR if give_up else FailureOutcome.RETRY
