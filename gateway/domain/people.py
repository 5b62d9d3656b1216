"""People who sign in to the clinician pages: accounts, passwords, lock-out, sessions, and the Caller
each person acts as (role `clinician`, their trust, their username in every audit row).

Local accounts hold an argon2id hash. Wrong passwords in a row lock an account for a while; a locked
account and a wrong password get the same answer, and an unknown username costs the same time, so
the sign-in form tells an attacker nothing. Sessions live in the database: the browser holds a random
token, the table its SHA-256, and a session ends when idle too long, at its absolute end, at sign-out,
or when the account is disabled or its password reset.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from auth.audit import Action, AuditRecord, Outcome
from auth.identity import Caller, Role
from auth.scopes import PRESCRIPTION_ORDER_UPDATE, READ_PRESCRIPTION, READ_TASKS, SEARCH_PRESCRIPTIONS
from fhir_profiles.identifiers import is_ods_code
from gateway.clock import Clock
from gateway.store import audit
from gateway.store import users as user_store
from gateway.store import web_sessions as session_store
from gateway.store.db import Database, Tx
from gateway.store.users import UserRecord
from gateway.store.web_sessions import SessionRecord

# The client id of every call the web pages make: the person is in `user_id`.
WEB_CLIENT_ID = "web-pages"
# What a clinician may do, in the scopes the API's services check: read and search their trust's
# prescriptions and status, cancel them and answer provider queries (prescription-order-update).
CLINICIAN_SCOPES = frozenset({READ_PRESCRIPTION, SEARCH_PRESCRIPTIONS, READ_TASKS, PRESCRIPTION_ORDER_UPDATE})
MIN_PASSWORD_LENGTH = 12
# A session not yet signed in (the sign-in form, an OpenID Connect round trip) lasts this long.
ANONYMOUS_SESSION = timedelta(hours=1)
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,99}$")
_hasher = PasswordHasher()
# Verified against when the username is unknown, so that case takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class AccountError(ValueError):
    """An account change refused, with a reason fit to show an operator."""


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta
    lockout_attempts: int
    lockout: timedelta


@dataclass(frozen=True, slots=True)
class Person:
    """A signed-in person, as the pages show them."""

    user_id: str
    username: str
    display_name: str
    ods_code: str


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """A live session: its token hash, CSRF token, and the person (None before sign-in)."""

    token_hash: str
    csrf_token: str
    person: Person | None
    pending: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str  # goes in the cookie, never stored
    session: BrowserSession


def caller_for(person: Person) -> Caller:
    """The Caller a signed-in person acts as: the API's services see a clinician of one trust."""
    return Caller(
        client_id=WEB_CLIENT_ID,
        role=Role.CLINICIAN,
        ods_code=person.ods_code,
        scopes=CLINICIAN_SCOPES,
        user_id=person.username,
    )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_matches(session: BrowserSession, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(session.csrf_token, submitted)


def _person(user: UserRecord) -> Person:
    return Person(user.id, user.username, user.display_name, user.ods_code)


def _audit(
    tx: Tx,
    *,
    action: Action,
    outcome: Outcome,
    username: str | None,
    ods: str | None,
    now: datetime,
    reason: str | None = None,
    request_id: str | None = None,
) -> None:
    audit.record(
        tx,
        [
            AuditRecord(
                occurred_at=now,
                action=action,
                outcome=outcome,
                request_id=request_id,
                client_id=WEB_CLIENT_ID,
                user_id=username,
                role=Role.CLINICIAN.value,
                ods_code=ods,
                resource_type="ClinicianUser",
                status=200 if outcome is Outcome.SUCCESS else 401,
                reason=reason,
            )
        ],
    )


# --- Accounts (the `users` commands) ----------------------------------------------------------------


def _operator_change(tx: Tx, action: Action, username: str, reason: str, now: datetime) -> None:
    # Accounts are changed at the console: the actor is the operator, the account is the resource.
    audit.record(
        tx,
        [
            AuditRecord(
                occurred_at=now,
                action=action,
                outcome=Outcome.SUCCESS,
                role="operator",
                resource_type="ClinicianUser",
                resource_id=username,
                reason=reason,
            )
        ],
    )


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def add_user(
    db: Database, *, username: str, display_name: str, ods_code: str, password: str, clock: Clock
) -> Person:
    """A local account for a member of one trust."""
    if not _USERNAME.match(username):
        raise AccountError(
            "a username is 2-100 lower-case letters, digits and . _ @ -, starting with a letter or digit"
        )
    if not is_ods_code(ods_code):
        raise AccountError("an ODS code is 3-12 capital letters and digits")
    if not display_name.strip():
        raise AccountError("give the person's name")
    check_password(password)
    now = clock()
    user = UserRecord(
        id=str(uuid.uuid4()),
        username=username,
        display_name=display_name.strip()[:200],
        ods_code=ods_code,
        password_hash=_hasher.hash(password),
        oidc_issuer=None,
        oidc_subject=None,
        enabled=True,
        failed_attempts=0,
        locked_until=None,
        last_sign_in_at=None,
        created_at=now,
    )
    try:
        with db.transaction() as tx:
            user_store.insert_user(tx, user, now=now)
            _operator_change(tx, Action.CREATE, username, "add-user", now)
    except user_store.UserExists:
        raise AccountError(f"the username {username} is taken") from None
    return _person(user)


def list_users(db: Database, *, ods_code: str | None = None) -> list[UserRecord]:
    with db.snapshot() as tx:
        return user_store.list_users(tx, ods_code=ods_code)


def set_enabled(db: Database, *, username: str, enabled: bool, clock: Clock) -> None:
    """Disable (ending every session of the person at once) or enable an account."""
    with db.transaction() as tx:
        user = user_store.find_by_username(tx, username)
        if user is None:
            raise AccountError(f"no user {username}")
        now = clock()
        user_store.set_enabled(tx, username, enabled=enabled, now=now)
        if not enabled:
            session_store.delete_user_sessions(tx, user.id)
        _operator_change(tx, Action.UPDATE, username, "enable-user" if enabled else "disable-user", now)


def reset_password(db: Database, *, username: str, password: str, clock: Clock) -> None:
    """A new password; unlocks the account and ends its sessions."""
    check_password(password)
    with db.transaction() as tx:
        user = user_store.find_by_username(tx, username)
        if user is None:
            raise AccountError(f"no user {username}")
        if user.oidc_subject is not None:
            raise AccountError(f"{username} signs in through OpenID Connect and has no password here")
        now = clock()
        user_store.set_password(tx, username, password_hash=_hasher.hash(password), now=now)
        session_store.delete_user_sessions(tx, user.id)
        _operator_change(tx, Action.UPDATE, username, "reset-password", now)


# --- Signing in ----------------------------------------------------------------------------------------


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _count_failure(tx: Tx, user: UserRecord, policy: SessionPolicy, now: datetime) -> bool:
    """One more wrong password; True when it locks the account (the count then starts again)."""
    attempts = user.failed_attempts + 1
    locks = attempts >= policy.lockout_attempts
    user_store.record_failed_sign_in(
        tx,
        user.id,
        failed_attempts=0 if locks else attempts,
        locked_until=now + policy.lockout if locks else None,
        now=now,
    )
    return locks


def sign_in_with_password(
    db: Database, *, username: str, password: str, policy: SessionPolicy, clock: Clock, request_id: str
) -> Person | None:
    """The person, or None (wrong username or password, disabled or locked: one answer for all)."""
    now = clock()
    with db.transaction() as tx:
        user = user_store.find_by_username(tx, username.strip().lower())
        locked = user is not None and user.locked_until is not None and user.locked_until > now
        # A locked account's password is not even checked; an unknown user's costs the same time.
        matches = _verify(user.password_hash if user and not locked else None, password)
        if user is not None and user.enabled and not locked and matches:
            user_store.record_sign_in(tx, user.id, now=now)
            _audit(
                tx,
                action=Action.SIGN_IN,
                outcome=Outcome.SUCCESS,
                username=user.username,
                ods=user.ods_code,
                now=now,
                reason="password",
                request_id=request_id,
            )
            return _person(user)
        if user is None:
            reason = "unknown-user"
        elif locked:
            reason = "locked"
        elif not matches:
            reason = "locked-now" if _count_failure(tx, user, policy, now) else "wrong-password"
        else:
            reason = "disabled"
        _audit(
            tx,
            action=Action.SIGN_IN,
            outcome=Outcome.REFUSED,
            username=user.username if user else None,
            ods=user.ods_code if user else None,
            now=now,
            reason=reason,
            request_id=request_id,
        )
    return None


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    """What a validated id_token says of the person."""

    issuer: str
    subject: str
    display_name: str
    ods_code: str | None


def _oidc_account(
    tx: Tx, user: UserRecord | None, identity: OidcIdentity, ods_code: str, now: datetime
) -> Person:
    """The account of the person the identity provider vouched for: made on first sign-in, brought
    up to date (name, trust) on each one after."""
    name = identity.display_name.strip()[:200] or identity.subject
    if user is None:
        username = f"oidc:{identity.subject}"[:100]
        if user_store.find_by_username(tx, username) is not None:
            # The same subject at another issuer: the issuer's digest keeps the two people apart.
            issuer = hashlib.sha256(identity.issuer.encode()).hexdigest()[:8]
            username = f"oidc:{issuer}:{identity.subject}"[:100]
        user = UserRecord(
            id=str(uuid.uuid4()),
            username=username,
            display_name=name,
            ods_code=ods_code,
            password_hash=None,
            oidc_issuer=identity.issuer,
            oidc_subject=identity.subject,
            enabled=True,
            failed_attempts=0,
            locked_until=None,
            last_sign_in_at=now,
            created_at=now,
        )
        user_store.insert_user(tx, user, now=now)
    else:
        user_store.update_profile(tx, user.id, display_name=name, ods_code=ods_code, now=now)
    user_store.record_sign_in(tx, user.id, now=now)
    return Person(user.id, user.username, name, ods_code)


def sign_in_with_oidc(
    db: Database, *, identity: OidcIdentity, clock: Clock, request_id: str
) -> Person | None:
    """The person the identity provider vouched for, their trust the one its claim names now (people
    move between trusts). None when the claim holds no ODS code or the account is disabled here."""
    now = clock()
    with db.transaction() as tx:
        user = user_store.find_by_oidc(tx, issuer=identity.issuer, subject=identity.subject)
        ods = identity.ods_code if identity.ods_code and is_ods_code(identity.ods_code) else None
        if ods is None or (user is not None and not user.enabled):
            _audit(
                tx,
                action=Action.SIGN_IN,
                outcome=Outcome.REFUSED,
                username=user.username if user else None,
                ods=None,
                now=now,
                reason="no-ods-claim" if ods is None else "disabled",
                request_id=request_id,
            )
            return None
        person = _oidc_account(tx, user, identity, ods, now)
        _audit(
            tx,
            action=Action.SIGN_IN,
            outcome=Outcome.SUCCESS,
            username=person.username,
            ods=ods,
            now=now,
            reason="oidc",
            request_id=request_id,
        )
    return person


# --- Sessions --------------------------------------------------------------------------------------------


def start_session(
    db: Database,
    *,
    person: Person | None,
    policy: SessionPolicy,
    clock: Clock,
    pending: dict[str, Any] | None = None,
) -> NewSession:
    """A new session with a new token and CSRF token (anonymous when `person` is None)."""
    now = clock()
    token = secrets.token_urlsafe(32)
    record = SessionRecord(
        token_hash=token_hash(token),
        user_id=person.user_id if person else None,
        csrf_token=secrets.token_urlsafe(32),
        pending=pending,
        created_at=now,
        last_seen_at=now,
        expires_at=now + (policy.absolute if person else ANONYMOUS_SESSION),
    )
    with db.transaction() as tx:
        session_store.insert_session(tx, record)
        # Each new session sweeps the stale ones: the table never grows without bound.
        session_store.delete_stale_sessions(
            tx, now=now, idle_before=now - max(policy.idle, ANONYMOUS_SESSION)
        )
    return NewSession(token, BrowserSession(record.token_hash, record.csrf_token, person, pending))


def resume_session(
    db: Database, *, token: str | None, policy: SessionPolicy, clock: Clock, touch: bool = True
) -> BrowserSession | None:
    """The live session behind a cookie's token, or None (unknown, expired, idle too long, disabled).

    `touch` counts this request as activity; a page's background polling does not, so a page left
    open still times out.
    """
    if not token or len(token) > 200:
        return None
    now = clock()
    hashed = token_hash(token)
    with db.transaction() as tx:
        record = session_store.find_session(tx, hashed)
        if record is None:
            return None
        idle_limit = policy.idle if record.user_id else ANONYMOUS_SESSION
        user = user_store.find_by_id(tx, record.user_id) if record.user_id else None
        if (
            record.expires_at <= now
            or now - record.last_seen_at > idle_limit
            or (record.user_id is not None and (user is None or not user.enabled))
        ):
            session_store.delete_session(tx, hashed)
            return None
        if touch:
            session_store.touch_session(tx, hashed, now=now)
    return BrowserSession(hashed, record.csrf_token, _person(user) if user else None, record.pending)


def set_pending(db: Database, session: BrowserSession, pending: dict[str, Any] | None) -> None:
    with db.transaction() as tx:
        session_store.set_pending(tx, session.token_hash, pending)


def end_session(db: Database, session: BrowserSession, *, clock: Clock, request_id: str) -> None:
    with db.transaction() as tx:
        session_store.delete_session(tx, session.token_hash)
        if session.person is not None:
            _audit(
                tx,
                action=Action.SIGN_OUT,
                outcome=Outcome.SUCCESS,
                username=session.person.username,
                ods=session.person.ods_code,
                now=clock(),
                request_id=request_id,
            )
