"""TRUST: what a trust's system sends to a gateway: its client assertion, well-formed EPS homecare
messages with valid identifiers, an unchanged retry, and cancellations that name their order."""

from __future__ import annotations

import time
from typing import Any, cast

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from conformance.assertions import ASSERTION_TYPE, decode_unverified
from conformance.checks import expect
from conformance.identifiers import UUID_PATTERN, nhs_number_valid, short_form_id_valid
from conformance.messages import (
    ITEM_SYSTEM,
    LONG_FORM_EXTENSION,
    MESSAGE_EVENT_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    PRESCRIPTION_ID_SYSTEM,
    PRESCRIPTION_TYPE_EXTENSION,
)
from conformance.model import Evidence, Failed, Requirement, Role, Skipped, conformance_test
from conformance.roles.trust.session import ArrivedMessage, TrustSession

ROLE = Role.TRUST
AUTHN = "DESIGN.md §6, §10 Security"
EPS = "EPS / DESIGN.md §3"
ALGORITHMS = ["RS512", "RS384", "ES384", "RS256", "ES256"]


def _assertions(session: TrustSession, evidence: Evidence) -> list[str]:
    evidence.exchanges.extend(e for e in session.collected.exchanges if "/auth/token" in e.url)
    assertions = [t.form.get("client_assertion", "") for t in session.collected.tokens]
    if not assertions:
        raise Skipped("the trust system never asked the suite's token endpoint for a token")
    return assertions


def _messages(session: TrustSession, evidence: Evidence, event: str | None = None) -> list[ArrivedMessage]:
    messages = [m for m in session.collected.messages if event is None or m.event == event]
    evidence.exchanges.extend(e for e in session.collected.exchanges if "$process-message" in e.url)
    if not messages:
        raise Skipped(f"no {event or 'message'} arrived: perform the scenarios within the wait")
    return messages


def _resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e.get("resource", {})
        for e in bundle.get("entry", [])
        if isinstance(e, dict) and e.get("resource", {}).get("resourceType") == resource_type
    ]


@conformance_test(
    "TRUST-AUTH-01",
    "The token request is a client_credentials grant with a jwt-bearer client assertion",
    Requirement(
        "RFC 7523 / SMART Backend Services", "grant_type client_credentials, client_assertion_type jwt-bearer"
    ),
    role=ROLE,
)
def token_request_form(session: TrustSession, evidence: Evidence) -> None:
    _assertions(session, evidence)
    for request in session.collected.tokens:
        expect(
            request.form.get("grant_type") == "client_credentials",
            f"grant_type is {request.form.get('grant_type')!r}",
        )
        expect(
            request.form.get("client_assertion_type") == ASSERTION_TYPE,
            f"client_assertion_type is {request.form.get('client_assertion_type')!r}",
        )


@conformance_test(
    "TRUST-AUTH-02",
    "The assertion is signed with the registered key (kid in the JWKS) by an accepted algorithm",
    Requirement(AUTHN, "RS512, RS384, ES384 (RS256, ES256 allowed); kid names the registered key"),
    role=ROLE,
)
def assertion_signature(session: TrustSession, evidence: Evidence) -> None:
    keys = KeySet.import_key_set(cast(KeySetSerialization, session.config.jwks or {"keys": []}))
    for assertion in _assertions(session, evidence):
        header, _ = decode_unverified(assertion)
        expect(header.get("alg") in ALGORITHMS, f"alg {header.get('alg')!r} is not accepted")
        expect(isinstance(header.get("kid"), str), "the assertion's header has no kid")
        try:
            jwt.decode(assertion, keys, algorithms=ALGORITHMS)
        except JoseError as exc:
            raise Failed(f"the assertion does not verify with the registered JWKS: {exc}") from exc


@conformance_test(
    "TRUST-AUTH-03",
    "The assertion's claims: iss = sub = client id, aud the exact token URL, "
    "exp at most 5 minutes ahead, a jti",
    Requirement(AUTHN, "iss=sub=client id, aud the exact token URL, exp at most 5 minutes ahead, unique jti"),
    role=ROLE,
)
def assertion_claims(session: TrustSession, evidence: Evidence) -> None:
    for assertion in _assertions(session, evidence):
        _, claims = decode_unverified(assertion)
        expect(
            claims.get("iss") == session.config.client_id, f"iss is {claims.get('iss')!r}, not the client id"
        )
        expect(claims.get("sub") == claims.get("iss"), "sub differs from iss")
        expect(
            claims.get("aud") == session.token_url, f"aud is {claims.get('aud')!r}, not {session.token_url!r}"
        )
        exp = claims.get("exp")
        expect(isinstance(exp, int), "exp is missing or not a number")
        expect(isinstance(exp, int) and exp <= time.time() + 300 + 5, "exp is more than 5 minutes ahead")
        expect(isinstance(claims.get("jti"), str) and claims["jti"] != "", "jti is missing")


@conformance_test(
    "TRUST-AUTH-04",
    "Every assertion has a new jti, and every message carries a token the gateway issued",
    Requirement(AUTHN, "an assertion is accepted once, ever; the API needs the bearer token"),
    role=ROLE,
)
def unique_jti_and_bearer(session: TrustSession, evidence: Evidence) -> None:
    jtis = [decode_unverified(a)[1].get("jti") for a in _assertions(session, evidence)]
    expect(len(set(jtis)) == len(jtis), "an assertion's jti was used again")
    for message in _messages(session, evidence):
        expect(session.issued(message.bearer), "a message arrived without a bearer token the suite issued")


@conformance_test(
    "TRUST-MSG-01",
    "Messages are FHIR JSON message Bundles with an identifier and a MessageHeader naming the trust",
    Requirement(EPS, "Bundle type message; MessageHeader first; sender the trust's ODS code"),
    role=ROLE,
)
def well_formed(session: TrustSession, evidence: Evidence) -> None:
    for message in _messages(session, evidence):
        expect(
            "fhir+json" in message.headers.get("content-type", "")
            or "application/json" in message.headers.get("content-type", ""),
            f"Content-Type is {message.headers.get('content-type')!r}",
        )
        bundle = message.bundle()
        expect(bundle is not None and bundle.get("resourceType") == "Bundle", "the body is not a JSON Bundle")
        assert bundle is not None
        expect(bundle.get("type") == "message", f"Bundle.type is {bundle.get('type')!r}")
        expect(
            UUID_PATTERN.fullmatch(str(message.identifier).lower()) is not None,
            "Bundle.identifier.value is not a UUID",
        )
        header = bundle["entry"][0]["resource"] if bundle.get("entry") else {}
        expect(header.get("resourceType") == "MessageHeader", "the first entry is not the MessageHeader")
        expect(
            header.get("eventCoding", {}).get("system") == MESSAGE_EVENT_SYSTEM,
            "eventCoding.system is not EPS's",
        )
        sender = header.get("sender", {}).get("identifier", {})
        expect(
            sender == {"system": ODS_SYSTEM, "value": session.config.ods}
            or (sender.get("system") == ODS_SYSTEM and sender.get("value") == session.config.ods),
            f"MessageHeader.sender is {sender}, not the trust's ODS code {session.config.ods}",
        )


@conformance_test(
    "TRUST-MSG-02",
    "Each order: 1-4 MedicationRequests sharing groupIdentifier and performer, homecare type 12xx, unique item ids",
    Requirement(
        EPS, "1-4 line items, one groupIdentifier, one performer, prescription type in the 12xx family"
    ),
    role=ROLE,
)
def order_shape(session: TrustSession, evidence: Evidence) -> None:
    for message in _messages(session, evidence, "prescription-order"):
        requests = _resources(message.bundle() or {}, "MedicationRequest")
        expect(1 <= len(requests) <= 4, f"{len(requests)} MedicationRequests (1-4 allowed)")
        groups = {r.get("groupIdentifier", {}).get("value") for r in requests}
        expect(len(groups) == 1, "the line items have different groupIdentifiers")
        performers = {
            str(r.get("dispenseRequest", {}).get("performer", {}).get("identifier")) for r in requests
        }
        expect(len(performers) == 1, "the line items name different performers")
        items = [
            i.get("value")
            for r in requests
            for i in r.get("identifier", [])
            if i.get("system") == ITEM_SYSTEM
        ]
        expect(
            len(items) == len(requests) and len(set(items)) == len(items),
            "line item identifiers missing or repeated",
        )
        for request in requests:
            expect(
                request.get("status") == "active"
                and request.get("intent") in ("order", "original-order", "instance-order"),
                f"status/intent {request.get('status')}/{request.get('intent')}",
            )
            types = [
                e.get("valueCoding", {}).get("code", "")
                for e in request.get("extension", [])
                if e.get("url") == PRESCRIPTION_TYPE_EXTENSION
            ]
            expect(
                len(types) == 1 and str(types[0]).startswith("12"),
                f"prescription type {types} is not homecare (12xx)",
            )


@conformance_test(
    "TRUST-ID-01",
    "Short-form prescription IDs pass the MOD 37-2 check; the long form is a UUID",
    Requirement(
        EPS, "XXXXXX-XXXXXX-XXXXXC with its ISO 7064 MOD 37-2 check character, plus the UUID long form"
    ),
    role=ROLE,
)
def prescription_ids(session: TrustSession, evidence: Evidence) -> None:
    for message in _messages(session, evidence):
        for request in _resources(message.bundle() or {}, "MedicationRequest"):
            group = request.get("groupIdentifier", {})
            expect(
                group.get("system") == PRESCRIPTION_ID_SYSTEM,
                f"groupIdentifier.system is {group.get('system')!r}",
            )
            expect(
                short_form_id_valid(str(group.get("value", ""))),
                f"short-form ID {group.get('value')!r} fails MOD 37-2",
            )
            long_forms = [
                e.get("valueIdentifier", {}).get("value", "")
                for e in group.get("extension", [])
                if e.get("url") == LONG_FORM_EXTENSION
            ]
            expect(
                len(long_forms) == 1 and UUID_PATTERN.fullmatch(str(long_forms[0]).lower()) is not None,
                "the long-form prescription ID (a UUID) is missing",
            )


@conformance_test(
    "TRUST-ID-02",
    "NHS numbers pass Modulus 11",
    Requirement("NHS number", "ten ASCII digits, Modulus 11 check digit"),
    role=ROLE,
)
def nhs_numbers(session: TrustSession, evidence: Evidence) -> None:
    for message in _messages(session, evidence, "prescription-order"):
        patients = _resources(message.bundle() or {}, "Patient")
        expect(patients != [], "the order has no Patient")
        for patient in patients:
            numbers = [
                i.get("value", "")
                for i in patient.get("identifier", [])
                if i.get("system") == NHS_NUMBER_SYSTEM
            ]
            expect(numbers != [], "the Patient has no NHS number")
            expect(all(nhs_number_valid(str(n)) for n in numbers), "an NHS number fails Modulus 11")


@conformance_test(
    "TRUST-REF-01",
    "References the gateway follows resolve inside the Bundle (subject, requester, MessageHeader.focus)",
    Requirement(
        "DESIGN.md §10 Wave 2",
        "MessageHeader.focus, each MedicationRequest's subject and requester resolve by fullUrl",
    ),
    role=ROLE,
)
def references(session: TrustSession, evidence: Evidence) -> None:
    for message in _messages(session, evidence):
        bundle = message.bundle() or {}
        urls = {e.get("fullUrl") for e in bundle.get("entry", [])}
        header = bundle["entry"][0]["resource"]
        for focus in header.get("focus", []):
            expect(
                focus.get("reference") in urls,
                f"MessageHeader.focus {focus.get('reference')!r} does not resolve",
            )
        for request in _resources(bundle, "MedicationRequest"):
            for element in ("subject", "requester"):
                reference = request.get(element, {}).get("reference")
                expect(reference in urls, f"MedicationRequest.{element} {reference!r} does not resolve")


@conformance_test(
    "TRUST-RETRY-01",
    "After a 503 the order is sent again unchanged: same Bundle.identifier, same bytes",
    Requirement(
        "DESIGN.md §3", "resubmitting the same Bundle is idempotent; a retry must be the same message"
    ),
    role=ROLE,
)
def retry_unchanged(session: TrustSession, evidence: Evidence) -> None:
    orders = session.collected.orders()
    _messages(session, evidence)
    if len(orders) < 2:
        raise Skipped("scenario S2 (a second order) was not performed")
    attempts = orders[1]
    expect(len(attempts) >= 2, "the order answered with 503 was never sent again")
    expect(all(a.body == attempts[0].body for a in attempts), "the retry changed the message's bytes")


@conformance_test(
    "TRUST-CANCEL-01",
    "A cancellation names its order: its prescription ID and line items, status cancelled "
    "with a coded reason, a new Bundle.identifier",
    Requirement(
        EPS,
        "prescription-order-update: one MedicationRequest per item to cancel, status cancelled, statusReason",
    ),
    role=ROLE,
)
def cancellation_names_order(session: TrustSession, evidence: Evidence) -> None:
    cancels = _messages(session, evidence, "prescription-order-update")
    orders = session.collected.orders()
    expect(orders != [], "a cancellation arrived but no order before it")
    order_bundle = orders[0][0].bundle() or {}
    order_requests = _resources(order_bundle, "MedicationRequest")
    group = order_requests[0].get("groupIdentifier", {}).get("value")
    order_items = {i.get("value") for r in order_requests for i in r.get("identifier", [])}
    sent_identifiers = {a.identifier for attempts in orders for a in attempts}
    for cancel in cancels:
        expect(
            cancel.identifier not in sent_identifiers, "the cancellation reuses an order's Bundle.identifier"
        )
        requests = _resources(cancel.bundle() or {}, "MedicationRequest")
        expect(requests != [], "the cancellation has no MedicationRequest")
        for request in requests:
            named = request.get("groupIdentifier", {}).get("value")
            expect(
                named == group,
                f"the cancellation names prescription {named!r}, not S1's {group!r}",
            )
            items = {i.get("value") for i in request.get("identifier", [])}
            expect(items <= order_items, "the cancellation names a line item that S1's order does not have")
            expect(
                request.get("status") == "cancelled", f"status is {request.get('status')!r}, not cancelled"
            )
            codings = request.get("statusReason", {}).get("coding", [])
            expect(codings != [] and codings[0].get("code"), "no coded statusReason")
