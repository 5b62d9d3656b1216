"""Putting a test fault (`gateway.faults`) into this process: the one hook mutant gateways use.

Each fault replaces one or two named functions (or constants) that the gateway calls with a faulty
version, most of them wrapping the original; so no production code path carries a fault check, and
`auth` and `fhir_profiles` never import the gateway. A replacement is process-wide: a process holds
one fault at most, and each mutant is a process of its own. A name that no longer exists fails the
start (AttributeError), so a refactoring cannot quietly turn a mutant back into the real gateway.
"""

from __future__ import annotations

import contextvars
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

import auth.assertion
import auth.tokens
import fhir_profiles.homecare
import gateway.api.errors
import gateway.api.process_message
import gateway.domain.cancellation
import gateway.domain.delivery
import gateway.domain.intake
import gateway.domain.messages
import gateway.domain.orders
import gateway.domain.status
import gateway.domain.status_authority
import gateway.domain.task_reads
import gateway.notify.delivery
import gateway.notify.service
import gateway.store.items
from auth.assertion import UnverifiedAssertion, VerifiedAssertion
from auth.clients import ClientKeys
from auth.identity import Caller, Role
from auth.models import Client
from auth.scopes import SUPPORTED_SCOPES
from auth.tokens import InvalidAccessTokenError, OAuthError, TokenService
from fhir_profiles.identifiers import NHS_NUMBER_SYSTEM, is_nhs_number_shaped, is_short_form_id_shaped
from fhir_profiles.outcome import ErrorCode, Issue, OperationOutcomeError
from gateway.dispatch.provider_channel import ProviderChannel
from gateway.domain.messages import IntakeAnswer, informational
from gateway.domain.status import Actor, IllegalTransition, ItemState, Status, StatusUpdate, Verdict
from gateway.faults import BREAKS, Fault
from gateway.logs import get_logger
from gateway.notify.delivery import RestHookSender
from gateway.notify.signature import SIGNATURE_HEADER
from gateway.store.items import ItemKey
from gateway.store.outbox import ClaimedMessage

log = get_logger("gateway.faults")

Replacement = tuple[Any, str, Callable[[Any], Any]]
"""(module or class, attribute, make(original) -> the faulty replacement)."""

_installed: Fault | None = None


def install(fault: Fault | None) -> None:
    """Put `fault` into this process (nothing when None), and say so loudly."""
    global _installed  # one fault per process, by design
    if fault is None:
        return
    if _installed is not None:
        if _installed is fault:
            return
        raise RuntimeError(f"this process already runs with test fault {_installed}; one fault per process")
    for owner, name, make in REPLACEMENTS[fault]():
        setattr(owner, name, make(getattr(owner, name)))
    _installed = fault
    log.critical(
        "test_fault_active",
        fault=fault.value,
        breaks=BREAKS[fault],
        warning="THIS GATEWAY BREAKS ITS CONTRACT ON PURPOSE (HOMECARE_TEST_FAULT): never use it for real",
    )


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda _original: value


# --- Token endpoint and bearer tokens --------------------------------------------------------------


def _taken_on_trust(assertion: UnverifiedAssertion) -> VerifiedAssertion:
    claims = assertion.claims
    return VerifiedAssertion(str(claims.get("iss")), str(claims.get("jti")), int(claims.get("exp", 0)))


def _algorithms_unchecked(*algorithms: str) -> list[Replacement]:
    """Assertions signed with `algorithms` (or not at all) are believed without a signature check."""

    def allow(original: Callable[[UnverifiedAssertion], None]) -> Callable[[UnverifiedAssertion], None]:
        def refuse_unsupported_algorithm(assertion: UnverifiedAssertion) -> None:
            if assertion.algorithm not in algorithms:
                original(assertion)

        return refuse_unsupported_algorithm

    def believe(original: Callable[..., VerifiedAssertion]) -> Callable[..., VerifiedAssertion]:
        def check_assertion(assertion: UnverifiedAssertion, **checks: Any) -> VerifiedAssertion:
            if assertion.algorithm in algorithms:
                return _taken_on_trust(assertion)
            return original(assertion, **checks)

        return check_assertion

    return [(auth.tokens, "refuse_unsupported_algorithm", allow), (auth.tokens, "check_assertion", believe)]


AssertionChange = Callable[[UnverifiedAssertion, str, int], tuple[UnverifiedAssertion, str, int]]


def _assertion_checked_as(change: AssertionChange) -> list[Replacement]:
    """check_assertion run on a changed assertion, token URL or time."""

    def make(original: Callable[..., VerifiedAssertion]) -> Callable[..., VerifiedAssertion]:
        def check_assertion(
            assertion: UnverifiedAssertion, *, key: Any, token_url: str, now: int
        ) -> VerifiedAssertion:
            assertion, token_url, now = change(assertion, token_url, now)
            return original(assertion, key=key, token_url=token_url, now=now)

        return check_assertion

    return [(auth.tokens, "check_assertion", make)]


def _its_own_audience(assertion: UnverifiedAssertion, token_url: str, now: int) -> tuple[Any, str, int]:
    audience = assertion.claims.get("aud")
    return assertion, audience if isinstance(audience, str) else token_url, now


def _before_it_expired(assertion: UnverifiedAssertion, token_url: str, now: int) -> tuple[Any, str, int]:
    expires = assertion.claims.get("exp")
    return assertion, token_url, min(now, expires - 1) if isinstance(expires, int) else now


def _subject_is_issuer(assertion: UnverifiedAssertion, token_url: str, now: int) -> tuple[Any, str, int]:
    return replace(assertion, claims={**assertion.claims, "sub": assertion.claims.get("iss")}), token_url, now


class _EverySignatureValid:
    """joserfc's `jws` module, except that every signature is valid."""

    def __getattr__(self, name: str) -> Any:
        return getattr(jws, name)

    @staticmethod
    def validate_compact(*_: Any, **__: Any) -> bool:
        return True


def _fresh_jti(original: Callable[..., None]) -> Callable[..., None]:
    def use_up(self: TokenService, client: Client, jti: str, expires_at: int, request_id: str) -> None:
        original(self, client, str(uuid.uuid4()), expires_at, request_id)

    return use_up


def _first_key_for_unknown_kid(original: Callable[..., Any]) -> Callable[..., Any]:
    def key_for(self: ClientKeys, client: Client, kid: str) -> Any:
        key = original(self, client, kid)
        registered = [k.get("kid") for k in (client.jwks or {}).get("keys", []) if k.get("kid")]
        return key if key is not None or not registered else original(self, client, registered[0])

    return key_for


def _any_requested_scope(original: Callable[[Client, str | None], list[str]]) -> Callable[..., list[str]]:
    def granted_scopes(client: Client, requested: str | None) -> list[str]:
        try:
            return original(client, requested)
        except OAuthError:
            return (requested or "").split()

    return granted_scopes


def _every_scope(original: Callable[[Client, str | None], list[str]]) -> Callable[..., list[str]]:
    def granted_scopes(client: Client, requested: str | None) -> list[str]:
        granted = original(client, requested)
        return [*granted, *(scope for scope in SUPPORTED_SCOPES if scope not in granted)]

    return granted_scopes


def _unsigned_tokens_believed(original: Callable[..., tuple[Caller, float]]) -> Callable[..., Any]:
    def verify(self: TokenService, access_token: str) -> tuple[Caller, float]:
        try:
            return original(self, access_token)
        except InvalidAccessTokenError as refusal:
            try:
                claims = json.loads(jws.extract_compact(access_token.encode("ascii")).payload)
            except (JoseError, ValueError, UnicodeError):
                raise refusal from None
        role = claims.get("role")
        caller = Caller(
            client_id=str(claims.get("sub", "")),
            role=Role(role) if role in tuple(Role) else Role.TRUST,
            ods_code=str(claims.get("ods_code", "")),
            scopes=frozenset(str(claims.get("scope", "")).split()),
        )
        return caller, datetime.now(UTC).timestamp() + 60

    return verify


# --- Intake --------------------------------------------------------------------------------------


def _sender_unchecked(original: Callable[..., None]) -> Callable[..., None]:
    def authorise(caller: Caller, envelope: Any) -> None:
        original(caller, replace(envelope, sender_ods=None))

    return authorise


def _crash_on_bad_json(original: Callable[..., Any]) -> Callable[..., Any]:
    async def read_fhir_json_body(request: Any, limit: int) -> tuple[bytes, object]:
        try:
            return await original(request, limit)  # type: ignore[no-any-return]
        except OperationOutcomeError as refusal:
            if any(issue.detail is ErrorCode.INVALID_JSON for issue in refusal.issues):
                raise ValueError("the body could not be parsed") from None
            raise

    return read_fhir_json_body


def _422_for_400(original: Callable[[list[Issue]], int]) -> Callable[[list[Issue]], int]:
    return lambda issues: 422 if original(issues) == 400 else original(issues)


def _without_expressions(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def operation_outcome(issues: list[Issue], **options: Any) -> dict[str, Any]:
        return original([replace(issue, expression=None) for issue in issues], **options)

    return operation_outcome


def _nhs_number_of(document: Any) -> str | None:
    for entry in document.get("entry", []) if isinstance(document, dict) else []:
        resource = entry.get("resource", {}) if isinstance(entry, dict) else {}
        for identifier in resource.get("identifier", []) if resource.get("resourceType") == "Patient" else []:
            if identifier.get("system") == NHS_NUMBER_SYSTEM:
                return str(identifier.get("value"))
    return None


def _nhs_number_in_location(original: Callable[..., Any]) -> Callable[..., Any]:
    async def receive_message(ctx: Any, *, document: Any, **message: Any) -> IntakeAnswer:
        answer: IntakeAnswer = await original(ctx, document=document, **message)
        nhs_number = _nhs_number_of(document)
        if answer.location and nhs_number:
            return replace(answer, location=f"{answer.location}?patient={nhs_number}")
        return answer

    return receive_message


def _always_replay(_original: Any) -> Callable[..., IntakeAnswer]:
    def replay_or_conflict(stored: Any, digest: str) -> IntakeAnswer:
        return IntakeAnswer(stored.status_code, stored.body, stored.location, replayed=True)

    return replay_or_conflict


def _duplicate_answered_200(original: Callable[..., IntakeAnswer]) -> Callable[..., IntakeAnswer]:
    def after_collision(ctx: Any, received: Any, order: Any) -> IntakeAnswer:
        try:
            return original(ctx, received, order)
        except OperationOutcomeError as refusal:
            if refusal.issues[0].detail is not ErrorCode.DUPLICATE_PRESCRIPTION_ID:
                raise
            return informational(200, f"Prescription {order.short_form_id} accepted")

    return after_collision


# --- Forwarding to the provider --------------------------------------------------------------------


def _delivered_as(change: Callable[[ClaimedMessage], ClaimedMessage]) -> list[Replacement]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def deliver(self: ProviderChannel, message: ClaimedMessage) -> Any:
            return await original(self, change(message))

        return deliver

    return [(ProviderChannel, "deliver", make)]


def _reserialised(message: ClaimedMessage) -> ClaimedMessage:
    return replace(message, body=json.dumps(json.loads(message.body), indent=1).encode())


# --- Status ---------------------------------------------------------------------------------------

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _in_arrival_order(original: Callable[..., tuple[ItemState, Verdict]]) -> Callable[..., Any]:
    def admit_update(
        start: ItemState, history: list[StatusUpdate], update: StatusUpdate
    ) -> tuple[ItemState, Verdict]:
        def arrival(u: StatusUpdate) -> StatusUpdate:
            return replace(u, occurred_at=_EPOCH + timedelta(seconds=u.sequence))

        return original(start, [arrival(u) for u in history], arrival(update))

    return admit_update


def _illegal_applied(original: Callable[..., tuple[ItemState, Verdict]]) -> Callable[..., Any]:
    def admit_update(
        start: ItemState, history: list[StatusUpdate], update: StatusUpdate
    ) -> tuple[ItemState, Verdict]:
        try:
            return original(start, history, update)
        except IllegalTransition:
            return ItemState(update.status), Verdict.APPLIED

    return admit_update


# --- Tenancy ----------------------------------------------------------------------------------------


def _find_ignoring(side: Callable[[Caller], bool]) -> Callable[[Any], Any]:
    """items.find that forgets tenancy for the callers `side` picks (and the provider in their keys)."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def find(tx: Any, key: ItemKey, *, caller: Caller | None = None, for_change: bool = False) -> Any:
            if caller is not None and side(caller):
                return original(tx, replace(key, provider_ods=None), caller=None, for_change=for_change)
            return original(tx, key, caller=caller, for_change=for_change)

        return find

    return make


_SEARCHING = contextvars.ContextVar("searching", default=False)


def _search_across_tenants() -> list[Replacement]:
    def searching(original: Callable[..., Any]) -> Callable[..., Any]:
        def search(tx: Any, **terms: Any) -> Any:
            token = _SEARCHING.set(True)
            try:
                return original(tx, **terms)
            finally:
                _SEARCHING.reset(token)

        return search

    def lax(original: Callable[..., Any]) -> Callable[..., Any]:
        def visible_filter(caller: Caller, *, tenant_column: Any, provider_column: Any) -> Any:
            if _SEARCHING.get():
                return tenant_column == tenant_column  # true for every row
            return original(caller, tenant_column=tenant_column, provider_column=provider_column)

        return visible_filter

    return [(gateway.store.items, "search", searching), (gateway.store.items, "visible_filter", lax)]


def _any_trusts_items(_original: Any) -> Any:
    def of_trust(short_form_id: str, item_identifier: str, tenant_ods: str) -> ItemKey:
        return ItemKey(short_form_id=short_form_id, item_identifier=item_identifier)

    return SimpleNamespace(of_trust=of_trust)


# --- Cancellation -----------------------------------------------------------------------------------


def _provider_always_agrees(original: Callable[..., None]) -> Callable[..., None]:
    def provider_answered_cancel(tx: Any, **answer: Any) -> None:
        original(tx, **{**answer, "agreed": True, "reason": None})

    return provider_answered_cancel


def _cancellable_when_dispensed() -> list[Replacement]:
    def with_dispensed(table: Any) -> Any:
        dispensed = {**table[Status.DISPENSED], Status.CANCEL_REQUESTED: frozenset({Actor.TRUST})}
        return {**table, Status.DISPENSED: dispensed}

    return [
        (gateway.domain.cancellation, "_CANCELLABLE", lambda cancellable: cancellable | {Status.DISPENSED}),
        (gateway.domain.status, "TRANSITIONS", with_dispensed),
    ]


# --- Subscriptions --------------------------------------------------------------------------------


def _unsigned_notifications(original: Callable[..., list[tuple[str, str]]]) -> Callable[..., Any]:
    def headers_for(self: RestHookSender, notification: Any, body: bytes) -> list[tuple[str, str]]:
        return [
            (name, value) for name, value in original(self, notification, body) if name != SIGNATURE_HEADER
        ]

    return headers_for


def _signed_by_a_stranger(original: Callable[[bytes, ECKey], str]) -> Callable[[bytes, ECKey], str]:
    def sign_detached(body: bytes, key: ECKey) -> str:
        stranger = ECKey.generate_key("P-256")
        return original(body, ECKey.import_key(stranger.as_dict(private=True), {"kid": key.kid or ""}))

    return sign_detached


def _subscription_scopes_held(original: Callable[[Caller, str], bool]) -> Callable[[Caller, str], bool]:
    def holds(self: Caller, needed_scope: str) -> bool:
        return needed_scope.startswith("system/Subscription.") or original(self, needed_scope)

    return holds


def _patient_search_in_url(original: Callable[..., Any]) -> Callable[..., Any]:
    def read_search(parameters: list[tuple[str, str]], *, patient_allowed: bool) -> Any:
        return original(parameters, patient_allowed=True)

    return read_search


REPLACEMENTS: dict[Fault, Callable[[], list[Replacement]]] = {
    Fault.ACCEPT_ALG_NONE: lambda: _algorithms_unchecked("none"),
    Fault.ACCEPT_HMAC_ASSERTION: lambda: _algorithms_unchecked("HS256", "HS384", "HS512"),
    Fault.IGNORE_ASSERTION_AUDIENCE: lambda: _assertion_checked_as(_its_own_audience),
    Fault.ACCEPT_EXPIRED_ASSERTION: lambda: _assertion_checked_as(_before_it_expired),
    Fault.ACCEPT_REPLAYED_JTI: lambda: [(TokenService, "_use_up", _fresh_jti)],
    Fault.ACCEPT_UNKNOWN_KID: lambda: [(ClientKeys, "key_for", _first_key_for_unknown_kid)],
    Fault.SKIP_ASSERTION_SIGNATURE: lambda: [(auth.assertion, "jws", _constant(_EverySignatureValid()))],
    Fault.ACCEPT_LONG_LIVED_ASSERTION: lambda: [(auth.assertion, "MAX_LIFETIME_SECONDS", _constant(86_400))],
    Fault.ACCEPT_ISS_NOT_SUB: lambda: _assertion_checked_as(_subject_is_issuer),
    Fault.GRANT_UNREGISTERED_SCOPES: lambda: [(auth.tokens, "_granted_scopes", _any_requested_scope)],
    Fault.ISSUE_EXTRA_SCOPES: lambda: [(auth.tokens, "_granted_scopes", _every_scope)],
    Fault.TRUST_UNSIGNED_BEARER_TOKENS: lambda: [(TokenService, "_verify", _unsigned_tokens_believed)],
    Fault.ACCEPT_BAD_CHECK_CHARACTER: lambda: [
        (fhir_profiles.homecare, "is_valid_short_form_id", _constant(is_short_form_id_shaped))
    ],
    Fault.ACCEPT_BAD_NHS_CHECK_DIGIT: lambda: [
        (fhir_profiles.homecare, "is_valid_nhs_number", _constant(is_nhs_number_shaped))
    ],
    Fault.ACCEPT_UNKNOWN_PROVIDER: lambda: [
        (gateway.domain.orders, "check_provider", _constant(lambda ctx, order: None))
    ],
    Fault.IGNORE_MESSAGE_SENDER: lambda: [(gateway.domain.intake, "_authorise", _sender_unchecked)],
    Fault.ANSWER_500_TO_BAD_JSON: lambda: [
        (gateway.api.process_message, "read_fhir_json_body", _crash_on_bad_json)
    ],
    Fault.STRUCTURE_ERRORS_AS_422: lambda: [(gateway.domain.intake, "status_for", _422_for_400)],
    Fault.DROP_ISSUE_EXPRESSION: lambda: [(gateway.api.errors, "operation_outcome", _without_expressions)],
    Fault.NHS_NUMBER_IN_LOCATION: lambda: [
        (gateway.domain.intake, "receive_message", _nhs_number_in_location)
    ],
    Fault.REPLAY_OTHER_BODY: lambda: [(gateway.domain.messages, "replay_or_conflict", _always_replay)],
    Fault.ACCEPT_DUPLICATE_PRESCRIPTION_ID: lambda: [
        (gateway.domain.orders, "_after_collision", _duplicate_answered_200)
    ],
    Fault.DROP_IDEMPOTENCY_KEY: lambda: _delivered_as(lambda message: replace(message, idempotency_key="")),
    Fault.REWRITE_FORWARDED_BYTES: lambda: _delivered_as(_reserialised),
    Fault.APPLY_STALE_REPORTS: lambda: [(gateway.domain.status_authority, "admit_update", _in_arrival_order)],
    Fault.ALLOW_ILLEGAL_TRANSITIONS: lambda: [
        (gateway.domain.status_authority, "admit_update", _illegal_applied)
    ],
    Fault.SHOW_OTHER_TRUSTS_TASKS: lambda: [
        (gateway.store.items, "find", _find_ignoring(lambda caller: caller.role is not Role.PROVIDER))
    ],
    Fault.SEARCH_ACROSS_TENANTS: _search_across_tenants,
    Fault.CANCEL_OTHER_TRUSTS_ORDERS: lambda: [(gateway.domain.cancellation, "ItemKey", _any_trusts_items)],
    Fault.SHOW_OTHER_PROVIDERS_ORDERS: lambda: [
        (gateway.store.items, "find", _find_ignoring(lambda caller: caller.role is Role.PROVIDER))
    ],
    Fault.ASK_PROVIDER_TO_CANCEL_UNSENT: lambda: [
        (gateway.domain.cancellation, "_never_sent", _constant(lambda *_: False))
    ],
    Fault.IGNORE_PROVIDER_CANCEL_REFUSAL: lambda: [
        (gateway.domain.delivery, "provider_answered_cancel", _provider_always_agrees)
    ],
    Fault.CANCEL_AFTER_DISPENSED: _cancellable_when_dispensed,
    Fault.DROP_NOTIFICATION_SIGNATURE: lambda: [(RestHookSender, "headers_for", _unsigned_notifications)],
    Fault.SIGN_NOTIFICATIONS_WITH_WRONG_KEY: lambda: [
        (gateway.notify.delivery, "sign_detached", _signed_by_a_stranger)
    ],
    Fault.LET_ANYONE_SUBSCRIBE: lambda: [
        (Caller, "holds", _subscription_scopes_held),
        (gateway.notify.service, "SUBSCRIBER_ROLES", _constant(frozenset(Role))),
    ],
    Fault.ALLOW_NHS_NUMBER_IN_SEARCH_URL: lambda: [
        (gateway.domain.task_reads, "_read_search", _patient_search_in_url)
    ],
}
"""What each fault replaces."""
