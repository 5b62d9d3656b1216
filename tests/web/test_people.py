"""People and sessions, without HTTP, on both backends and under a clock the tests move: lock-out
and its end, idle and absolute expiry, disabling and password resets ending sessions, and accounts
made on first OpenID Connect sign-in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from auth.identity import Role
from gateway.domain import people
from gateway.store.db import Database
from tests.web.support import PASSWORD, add_people

POLICY = people.SessionPolicy(
    idle=timedelta(minutes=30),
    absolute=timedelta(hours=12),
    lockout_attempts=3,
    lockout=timedelta(minutes=15),
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(db: Database) -> Clock:
    add_people(db)
    return Clock()


def sign_in(
    db: Database, clock: Clock, password: str = PASSWORD, username: str = "alice"
) -> people.Person | None:
    return people.sign_in_with_password(
        db, username=username, password=password, policy=POLICY, clock=clock, request_id="r"
    )


def test_a_person_acts_as_a_clinician_of_their_trust_named_in_the_audit(db: Database, clock: Clock) -> None:
    person = sign_in(db, clock)
    assert person is not None
    caller = people.caller_for(person)
    assert (caller.role, caller.ods_code, caller.user_id) == (Role.CLINICIAN, "RBA", "alice")
    assert caller.holds("system/MedicationRequest.u") and caller.holds("system/Task.rs")
    assert not caller.holds("system/MedicationRequest.c"), "a person never sends orders"


def test_the_account_locks_after_repeated_failures_and_unlocks_after_a_while(
    db: Database, clock: Clock
) -> None:
    for _ in range(3):
        assert sign_in(db, clock, "wrong password!!") is None
    assert sign_in(db, clock) is None, "locked: even the right password is refused"
    clock.advance(minutes=14)
    assert sign_in(db, clock) is None
    clock.advance(minutes=2)
    assert sign_in(db, clock) is not None
    assert sign_in(db, clock, "wrong password!!") is None, "a success starts the count again"
    assert sign_in(db, clock) is not None


def test_an_idle_session_ends_and_activity_keeps_it_alive(db: Database, clock: Clock) -> None:
    person = sign_in(db, clock)
    started = people.start_session(db, person=person, policy=POLICY, clock=clock)
    for _ in range(3):
        clock.advance(minutes=29)
        assert people.resume_session(db, token=started.token, policy=POLICY, clock=clock) is not None
    clock.advance(minutes=20)
    # Polling does not count as activity.
    assert people.resume_session(db, token=started.token, policy=POLICY, clock=clock, touch=False) is not None
    clock.advance(minutes=11)
    assert people.resume_session(db, token=started.token, policy=POLICY, clock=clock) is None
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM web_session")).scalar_one() == 0


def test_a_session_ends_at_its_absolute_limit_however_busy(db: Database, clock: Clock) -> None:
    person = sign_in(db, clock)
    started = people.start_session(db, person=person, policy=POLICY, clock=clock)
    for _ in range(23):
        clock.advance(minutes=30)
        assert people.resume_session(db, token=started.token, policy=POLICY, clock=clock) is not None
    clock.advance(minutes=30)
    assert people.resume_session(db, token=started.token, policy=POLICY, clock=clock) is None


def test_disabling_or_resetting_the_password_ends_the_persons_sessions(db: Database, clock: Clock) -> None:
    person = sign_in(db, clock)
    first = people.start_session(db, person=person, policy=POLICY, clock=clock)
    people.reset_password(db, username="alice", password="another long password", clock=clock)
    assert people.resume_session(db, token=first.token, policy=POLICY, clock=clock) is None
    assert sign_in(db, clock) is None and sign_in(db, clock, "another long password") is not None
    second = people.start_session(db, person=person, policy=POLICY, clock=clock)
    people.set_enabled(db, username="alice", enabled=False, clock=clock)
    assert people.resume_session(db, token=second.token, policy=POLICY, clock=clock) is None
    assert sign_in(db, clock, "another long password") is None
    people.set_enabled(db, username="alice", enabled=True, clock=clock)
    assert sign_in(db, clock, "another long password") is not None


def test_accounts_refuse_bad_names_short_passwords_and_duplicates(db: Database, clock: Clock) -> None:
    for username, ods, password in (
        ("Alice Smith", "RBA", PASSWORD),
        ("carol", "rba", PASSWORD),
        ("carol", "RBA", "short"),
        ("alice", "RBA", PASSWORD),
    ):
        with pytest.raises(people.AccountError):
            people.add_user(
                db, username=username, display_name="C", ods_code=ods, password=password, clock=clock
            )
    with db.read() as session:
        stored = session.execute(
            text("SELECT password_hash FROM clinician_user WHERE username = 'alice'")
        ).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_the_first_oidc_sign_in_makes_the_account_and_later_ones_follow_the_claim(
    db: Database, clock: Clock
) -> None:
    identity = people.OidcIdentity("https://idp.test", "5550001", "Dana Doctor", "RBA")
    first = people.sign_in_with_oidc(db, identity=identity, clock=clock, request_id="r")
    assert first is not None and (first.username, first.ods_code) == ("oidc:5550001", "RBA")
    moved = people.sign_in_with_oidc(
        db,
        identity=people.OidcIdentity("https://idp.test", "5550001", "Dana Doctor", "RBB"),
        clock=clock,
        request_id="r",
    )
    assert moved is not None and moved.user_id == first.user_id and moved.ods_code == "RBB"
    no_trust = people.OidcIdentity("https://idp.test", "5550002", "Eve", None)
    assert people.sign_in_with_oidc(db, identity=no_trust, clock=clock, request_id="r") is None
    people.set_enabled(db, username="oidc:5550001", enabled=False, clock=clock)
    assert people.sign_in_with_oidc(db, identity=identity, clock=clock, request_id="r") is None
    with pytest.raises(people.AccountError):
        people.reset_password(db, username="oidc:5550001", password=PASSWORD, clock=clock)
    elsewhere = people.OidcIdentity("https://other-idp.test", "5550001", "Another Person", "RBA")
    other = people.sign_in_with_oidc(db, identity=elsewhere, clock=clock, request_id="r")
    assert other is not None and other.user_id != first.user_id
    assert other.username.startswith("oidc:") and other.username.endswith(":5550001")
