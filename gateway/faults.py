"""Test faults: each one makes the gateway break one rule of its contract on purpose.

A gateway started with `HOMECARE_TEST_FAULT=<name>` is a *mutant*: our gateway with exactly that
fault. The conformance suite must fail each mutant with the test that names the fault
(`tests/conformance/test_mutants.py`); that is how the suite's tests are tested. `Settings` refuses
the setting in production and the gateway logs loudly at start when one is on. The faults are put
in by `gateway.fault_injection` when the app is created; nothing here runs otherwise.
"""

from __future__ import annotations

from enum import StrEnum


class Fault(StrEnum):
    """One deliberate fault; the value is what `HOMECARE_TEST_FAULT` names."""

    # Token endpoint and bearer tokens
    ACCEPT_ALG_NONE = "accept-alg-none"
    ACCEPT_HMAC_ASSERTION = "accept-hmac-assertion"
    IGNORE_ASSERTION_AUDIENCE = "ignore-assertion-audience"
    ACCEPT_EXPIRED_ASSERTION = "accept-expired-assertion"
    ACCEPT_REPLAYED_JTI = "accept-replayed-jti"
    ACCEPT_UNKNOWN_KID = "accept-unknown-kid"
    SKIP_ASSERTION_SIGNATURE = "skip-assertion-signature"
    ACCEPT_LONG_LIVED_ASSERTION = "accept-long-lived-assertion"
    ACCEPT_ISS_NOT_SUB = "accept-iss-not-sub"
    GRANT_UNREGISTERED_SCOPES = "grant-unregistered-scopes"
    ISSUE_EXTRA_SCOPES = "issue-extra-scopes"
    TRUST_UNSIGNED_BEARER_TOKENS = "trust-unsigned-bearer-tokens"
    # Intake
    ACCEPT_BAD_CHECK_CHARACTER = "accept-bad-check-character"
    ACCEPT_BAD_NHS_CHECK_DIGIT = "accept-bad-nhs-check-digit"
    ACCEPT_UNKNOWN_PROVIDER = "accept-unknown-provider"
    IGNORE_MESSAGE_SENDER = "ignore-message-sender"
    ANSWER_500_TO_BAD_JSON = "answer-500-to-bad-json"
    STRUCTURE_ERRORS_AS_422 = "structure-errors-as-422"
    DROP_ISSUE_EXPRESSION = "drop-issue-expression"
    NHS_NUMBER_IN_LOCATION = "nhs-number-in-location"
    REPLAY_OTHER_BODY = "replay-other-body"
    ACCEPT_DUPLICATE_PRESCRIPTION_ID = "accept-duplicate-prescription-id"
    # Forwarding to the provider
    DROP_IDEMPOTENCY_KEY = "drop-idempotency-key"
    REWRITE_FORWARDED_BYTES = "rewrite-forwarded-bytes"
    # Status
    APPLY_STALE_REPORTS = "apply-stale-reports"
    ALLOW_ILLEGAL_TRANSITIONS = "allow-illegal-transitions"
    # Tenancy
    SHOW_OTHER_TRUSTS_TASKS = "show-other-trusts-tasks"
    SEARCH_ACROSS_TENANTS = "search-across-tenants"
    CANCEL_OTHER_TRUSTS_ORDERS = "cancel-other-trusts-orders"
    SHOW_OTHER_PROVIDERS_ORDERS = "show-other-providers-orders"
    # Cancellation
    ASK_PROVIDER_TO_CANCEL_UNSENT = "ask-provider-to-cancel-unsent"
    IGNORE_PROVIDER_CANCEL_REFUSAL = "ignore-provider-cancel-refusal"
    CANCEL_AFTER_DISPENSED = "cancel-after-dispensed"
    # Subscriptions
    DROP_NOTIFICATION_SIGNATURE = "drop-notification-signature"
    SIGN_NOTIFICATIONS_WITH_WRONG_KEY = "sign-notifications-with-wrong-key"
    LET_ANYONE_SUBSCRIBE = "let-anyone-subscribe"
    # Patient data
    ALLOW_NHS_NUMBER_IN_SEARCH_URL = "allow-nhs-number-in-search-url"


BREAKS: dict[Fault, str] = {
    Fault.ACCEPT_ALG_NONE: "client assertions with alg 'none' get a token",
    Fault.ACCEPT_HMAC_ASSERTION: "HMAC-signed client assertions get a token, unverified",
    Fault.IGNORE_ASSERTION_AUDIENCE: "a client assertion's 'aud' is not checked",
    Fault.ACCEPT_EXPIRED_ASSERTION: "expired client assertions get a token",
    Fault.ACCEPT_REPLAYED_JTI: "a client assertion can be used again (its 'jti' is not remembered)",
    Fault.ACCEPT_UNKNOWN_KID: "an unknown 'kid' falls back to the client's first key",
    Fault.SKIP_ASSERTION_SIGNATURE: "a client assertion's signature is not checked",
    Fault.ACCEPT_LONG_LIVED_ASSERTION: "client assertions may live a day, not five minutes",
    Fault.ACCEPT_ISS_NOT_SUB: "a client assertion's 'sub' need not be its 'iss'",
    Fault.GRANT_UNREGISTERED_SCOPES: "a token gets any scope the client asks for",
    Fault.ISSUE_EXTRA_SCOPES: "every token carries every scope",
    Fault.TRUST_UNSIGNED_BEARER_TOKENS: "a bearer token the gateway did not sign is believed",
    Fault.ACCEPT_BAD_CHECK_CHARACTER: "a prescription ID's MOD 37-2 check character is not checked",
    Fault.ACCEPT_BAD_NHS_CHECK_DIGIT: "an NHS number's Modulus 11 check digit is not checked",
    Fault.ACCEPT_UNKNOWN_PROVIDER: "an order's provider is not checked (one not registered then fails to store: 500)",
    Fault.IGNORE_MESSAGE_SENDER: "a trust may send messages in another trust's name",
    Fault.ANSWER_500_TO_BAD_JSON: "a body that is not JSON gets a 500",
    Fault.STRUCTURE_ERRORS_AS_422: "structural errors are answered 422, not 400",
    Fault.DROP_ISSUE_EXPRESSION: "OperationOutcome issues lose their 'expression'",
    Fault.NHS_NUMBER_IN_LOCATION: "the Location header carries the patient's NHS number",
    Fault.REPLAY_OTHER_BODY: "other bytes under a used Bundle.identifier get the first answer, not 409",
    Fault.ACCEPT_DUPLICATE_PRESCRIPTION_ID: "a reused prescription ID is answered 200, not 409",
    Fault.DROP_IDEMPOTENCY_KEY: "orders reach the provider without an Idempotency-Key",
    Fault.REWRITE_FORWARDED_BYTES: "orders reach the provider re-serialised (the signature breaks)",
    Fault.APPLY_STALE_REPORTS: "status reports apply in arrival order, stale ones too",
    Fault.ALLOW_ILLEGAL_TRANSITIONS: "a status report the transition table forbids is applied",
    Fault.SHOW_OTHER_TRUSTS_TASKS: "a trust reads another trust's Tasks",
    Fault.SEARCH_ACROSS_TENANTS: "Task searches ignore tenancy",
    Fault.CANCEL_OTHER_TRUSTS_ORDERS: "a trust cancels another trust's prescription",
    Fault.SHOW_OTHER_PROVIDERS_ORDERS: "a provider reads and reports on another provider's orders",
    Fault.ASK_PROVIDER_TO_CANCEL_UNSENT: "an order the provider never had is not cancelled at once",
    Fault.IGNORE_PROVIDER_CANCEL_REFUSAL: "a cancellation the provider refused is recorded as cancelled",
    Fault.CANCEL_AFTER_DISPENSED: "a dispensed item can still be cancelled",
    Fault.DROP_NOTIFICATION_SIGNATURE: "notifications are sent without X-Signature",
    Fault.SIGN_NOTIFICATIONS_WITH_WRONG_KEY: "notifications are signed with a key not in the JWKS",
    Fault.LET_ANYONE_SUBSCRIBE: "any client may create Subscriptions (no scope, no trust role needed)",
    Fault.ALLOW_NHS_NUMBER_IN_SEARCH_URL: "a Task search by NHS number is allowed in the URL",
}
"""What each fault breaks, in a sentence: the start log says it, and the README lists it."""
