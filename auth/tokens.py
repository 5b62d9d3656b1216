"""The token endpoint's logic and the access tokens it issues.

`TokenService.issue` runs the client credentials grant with a private_key_jwt client assertion and
answers with a short-lived access token: a JWT signed with the gateway's key carrying the client
id, its role, its organisation's ODS code and the granted scopes. `TokenService.caller_for` turns
such a token back into a `Caller` on every API request, without a database round trip.
Every decision is audited: an issued token in the same transaction that uses up the assertion's
`jti`, a refusal in its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from auth import audit
from auth.assertion import (
    ASSERTION_TYPE,
    AssertionRefusedError,
    MalformedAssertionError,
    check_assertion,
    read_assertion,
    refuse_unsupported_algorithm,
)
from auth.clients import ClientKeys, KeySetError, get_client
from auth.identity import Caller, Role
from auth.models import Client, UsedAssertion
from auth.scopes import ScopeError, covers, parse_scopes
from auth.signing import ACCESS_TOKEN_ALGORITHM, SigningKeys

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105  (RFC 9068 media type)

_INSERT_USED = insert(UsedAssertion.__table__)  # type: ignore[attr-defined]
_STATUS = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "invalid_scope": 400,
    "unsupported_grant_type": 400,
}


class OAuthError(Exception):
    """A refusal at the token endpoint, answered as RFC 6749 section 5.2 says."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description

    @property
    def status_code(self) -> int:
        return _STATUS[self.error]

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidAccessTokenError(Exception):
    """A bearer token the gateway did not issue, or no longer honours; the text says why."""


class Transactions(Protocol):
    """What the token service needs of the database (gateway.store.db.Database provides it)."""

    def read(self) -> AbstractContextManager[Session]: ...

    def write(self) -> AbstractContextManager[Session]: ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str
    client_id: str = ""  # whom it was issued to (not part of the answer)

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


_VERIFIED_CACHE_SIZE = 10_000


class TokenService:
    def __init__(
        self,
        db: Transactions,
        *,
        signing_keys: SigningKeys,
        client_keys: ClientKeys,
        token_url: str,
        issuer: str,
        audience: str,
        lifetime_seconds: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self.signing_keys = signing_keys
        self._client_keys = client_keys
        self.token_url = token_url
        self._issuer = issuer
        self._audience = audience
        self._lifetime = lifetime_seconds
        self._clock = clock
        # Access token -> (expiry, caller): verified tokens, so a signature is checked once.
        self._verified: dict[str, tuple[float, Caller, object]] = {}
        # Where refusals go instead of a row each (the gateway coalesces floods of them); unset, a row.
        self.refusal_sink: Callable[[audit.AuditRecord], None] | None = None

    def issue(self, form: Mapping[str, str], *, request_id: str) -> IssuedToken:
        """An access token for a client that proved its identity, or an OAuthError saying why not."""
        client: Client | None = None
        try:
            assertion_text = _required_parameters(form)
            assertion = read_assertion(assertion_text)
            refuse_unsupported_algorithm(assertion)
            client = self._client(assertion.issuer, form.get("client_id"))
            if not client.enabled:
                raise AssertionRefusedError("this client is disabled")
            assert assertion.kid is not None
            key = self._client_keys.key_for(client, assertion.kid)
            if key is None:
                raise AssertionRefusedError(f"kid '{assertion.kid}' is not a registered key of this client")
            now = int(self._clock().timestamp())
            verified = check_assertion(assertion, key=key, token_url=self.token_url, now=now)
            scopes = _granted_scopes(client, form.get("scope"))
            self._use_up(client, verified.jti, verified.expires_at, request_id)
            return self._sign(client, scopes, now)
        except (AssertionRefusedError, KeySetError) as exc:
            refusal = OAuthError("invalid_client", str(exc))
            self.record_refusal(refusal, request_id, client)
            raise refusal from exc
        except MalformedAssertionError as exc:
            refusal = OAuthError("invalid_request", str(exc))
            self.record_refusal(refusal, request_id, client)
            raise refusal from exc
        except OAuthError as refusal:
            self.record_refusal(refusal, request_id, client)
            raise

    def _client(self, issuer: str | None, form_client_id: str | None) -> Client:
        if issuer is None:
            raise AssertionRefusedError("the assertion has no 'iss' (the client id)")
        if form_client_id is not None and form_client_id != issuer:
            raise AssertionRefusedError("client_id does not match the assertion's 'iss'")
        with self._db.read() as session:
            client = get_client(session, issuer)
        if client is None:
            raise AssertionRefusedError("unknown client")
        return client

    def _use_up(self, client: Client, jti: str, expires_at: int, request_id: str) -> None:
        """Record the `jti` (refusing a replay) and the issue, in one transaction."""
        record = audit.AuditRecord(
            occurred_at=self._clock(),
            action=audit.Action.ISSUE_TOKEN,
            outcome=audit.Outcome.SUCCESS,
            request_id=request_id,
            client_id=client.client_id,
            role=client.role,
            ods_code=client.ods_code,
            resource_type="Client",
            resource_id=client.client_id,
            status=200,
        )
        try:
            with self._db.write() as session:
                session.connection().execute(
                    _INSERT_USED, [{"client_id": client.client_id, "jti": jti, "expires_at": expires_at}]
                )
                audit.append(session.connection(), [record])
        except IntegrityError as exc:
            raise AssertionRefusedError("this assertion's 'jti' was used before (replay)") from exc

    def _sign(self, client: Client, scopes: list[str], now: int) -> IssuedToken:
        key = self.signing_keys.signing_key
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": client.client_id,
            "client_id": client.client_id,
            "role": client.role,
            "ods_code": client.ods_code,
            "scope": " ".join(scopes),
            "iat": now,
            "exp": now + self._lifetime,
            "jti": str(uuid.uuid4()),
        }
        header = {"alg": ACCESS_TOKEN_ALGORITHM, "kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
        token = jwt.encode(header, claims, key, algorithms=[ACCESS_TOKEN_ALGORITHM])
        return IssuedToken(
            access_token=token, expires_in=self._lifetime, scope=" ".join(scopes), client_id=client.client_id
        )

    def record_refusal(self, refusal: OAuthError, request_id: str, client: Client | None = None) -> None:
        # Only a registered client is named: an unknown `iss` is whatever the caller typed.
        record = audit.AuditRecord(
            occurred_at=self._clock(),
            action=audit.Action.ISSUE_TOKEN,
            outcome=audit.Outcome.REFUSED,
            request_id=request_id,
            client_id=client.client_id if client else None,
            role=client.role if client else None,
            ods_code=client.ods_code if client else None,
            resource_type="Client" if client else None,
            resource_id=client.client_id if client else None,
            status=refusal.status_code,
            reason=refusal.error,
        )
        if self.refusal_sink is not None:
            self.refusal_sink(record)
            return
        with self._db.write() as session:
            audit.append(session.connection(), [record])

    def caller_for(self, access_token: str) -> Caller:
        """The caller an access token speaks for; InvalidAccessTokenError if not one of ours, or stale.

        A token's signature is checked once; until it expires, or the key ring changes, its caller
        is remembered (a client sends the same token with every request for its lifetime).
        """
        now = self._clock().timestamp()
        generation = self.signing_keys.generation
        remembered = self._verified.get(access_token)
        if remembered is not None and now < remembered[0] and remembered[2] is generation:
            return remembered[1]
        caller, expires_at = self._verify(access_token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[access_token] = (expires_at, caller, self.signing_keys.generation)
        return caller

    def _verify(self, access_token: str) -> tuple[Caller, float]:
        try:
            token = self._decode(access_token)
        except InvalidKeyIdError as exc:
            # Another process may have rotated the keys a moment ago; otherwise it is not our key.
            if not self.signing_keys.refresh():
                raise InvalidAccessTokenError("the access token is not one this gateway signed") from exc
            try:
                token = self._decode(access_token)
            except InvalidKeyIdError as again:
                raise InvalidAccessTokenError("the access token is not one this gateway signed") from again
        if token.header.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidAccessTokenError("not an access token")
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock().timestamp()),
            iss={"essential": True, "value": self._issuer},
            aud={"essential": True, "value": self._audience},
            exp={"essential": True},
            client_id={"essential": True},
            ods_code={"essential": True},
            role={"essential": True},
            scope={"essential": True},
        )
        claims = token.claims
        try:
            registry.validate(claims)
            role = Role(claims["role"])
        except (JoseError, ValueError) as exc:
            raise InvalidAccessTokenError("the access token has expired or its claims are not valid") from exc
        caller = Caller(
            client_id=str(claims["client_id"]),
            role=role,
            ods_code=str(claims["ods_code"]),
            scopes=frozenset(str(claims["scope"]).split()),
        )
        return caller, float(claims["exp"])

    def _decode(self, access_token: str) -> jwt.Token:
        try:
            return jwt.decode(
                access_token, self.signing_keys.verification_keys, algorithms=[ACCESS_TOKEN_ALGORITHM]
            )
        except InvalidKeyIdError:
            raise
        except (JoseError, ValueError, UnicodeError) as exc:
            raise InvalidAccessTokenError("the access token is not one this gateway signed") from exc

    def close(self) -> None:
        self._client_keys.close()

    def purge_used_assertions(self) -> int:
        """Forget `jti`s whose assertions have expired: they can no longer be replayed anyway."""
        now = int(self._clock().timestamp())
        with self._db.write() as session:
            result = session.connection().execute(
                delete(UsedAssertion).where(col(UsedAssertion.expires_at) < now)
            )
        return result.rowcount


def _required_parameters(form: Mapping[str, str]) -> str:
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "only grant_type=client_credentials is supported")
    assertion_type = form.get("client_assertion_type")
    if assertion_type != ASSERTION_TYPE:
        raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion")
    if not assertion:
        raise OAuthError(
            "invalid_request", "client_assertion is required (a JWT signed with the client's key)"
        )
    return assertion


def _granted_scopes(client: Client, requested: str | None) -> list[str]:
    if requested is None or not requested.strip():
        return list(client.scopes)
    try:
        wanted = parse_scopes(requested)
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from exc
    refused = [scope for scope in wanted if not covers(client.scopes, scope)]
    if refused:
        raise OAuthError("invalid_scope", f"not granted to this client: {' '.join(refused)}")
    return wanted
