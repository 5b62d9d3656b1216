"""Registering a client and its keys: what is refused, with the text an operator acts on; the stored
forms of times and audit rows; the role ceilings on scopes. Called directly (the CLI's own tests
are in tests/test_security_cli.py)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, RSAKey

from auth.assertion import ASSERTION_ALGORITHMS
from auth.audit import Action, AuditRecord, Outcome
from auth.clients import (
    ClientRegistryError,
    KeySetError,
    KeySource,
    add_client,
    check_client_id,
    get_client,
    parse_key_set,
)
from auth.identity import Role
from auth.models import utc_text
from auth.scopes import Scope, beyond_role
from gateway.store.db import Database


def public(key: ECKey | RSAKey, kid: str = "k-1", **extra: Any) -> dict[str, Any]:
    return {**key.as_dict(private=False), "kid": kid, **extra}


EC_KEY = ECKey.generate_key("P-256")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SecurityWarning)  # too small on purpose
    SMALL_RSA_KEY = RSAKey.generate_key(1024)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ([], 'a JWKS is a JSON object {"keys": [...]} with at least one key'),
        ({"keys": []}, 'a JWKS is a JSON object {"keys": [...]} with at least one key'),
        ({"keys": ["k"]}, "key 0 is not a JSON object"),
        ({"keys": [public(EC_KEY), "k"]}, "key 1 is not a JSON object"),
        ({"keys": [public(EC_KEY, kid=5)]}, "key 0 has no 'kid'"),  # type: ignore[arg-type]
        ({"keys": [public(EC_KEY), public(EC_KEY)]}, "kid 'k-1' appears twice"),
        ({"keys": [public(EC_KEY, use="enc")]}, "key 'k-1' is not a signing key (use is 'enc')"),
        (
            {"keys": [public(EC_KEY, alg="HS256")]},
            "key 'k-1' names alg 'HS256'; accepted: RS512, RS384, ES384, RS256, ES256",
        ),
        (
            {"keys": [public(ECKey.generate_key("P-521"))]},
            "key 'k-1' cannot be read: EC keys must be on P-256 or P-384",
        ),
        (
            {"keys": [public(SMALL_RSA_KEY)]},
            "key 'k-1' cannot be read: RSA keys need at least 2048 bits",
        ),
        (
            {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k-1"}]},
            "key 0 holds private key material: register the public key only",
        ),
        (
            {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "k-1"}]},
            "key 'k-1' cannot be read: key type 'OKP' is not accepted (RSA or EC)",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Key size should be:joserfc.errors.SecurityWarning")
def test_a_key_set_that_cannot_be_used_is_refused_naming_the_key_and_the_reason(data: Any, text: str) -> None:
    assert ", ".join(ASSERTION_ALGORITHMS) == "RS512, RS384, ES384, RS256, ES256"
    with pytest.raises(KeySetError) as refused:
        parse_key_set(data)
    assert str(refused.value) == text


def test_a_key_without_use_or_alg_is_a_signing_key_and_every_kid_is_kept() -> None:
    other = ECKey.generate_key("P-384")
    keys = parse_key_set({"keys": [public(EC_KEY, kid="a"), public(other, kid="b", use="sig", alg="ES384")]})
    assert [key.kid for key in keys] == ["a", "b"]


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        (
            {"client_id": "-starts-with-a-dash"},
            "a client id is 1-100 letters, digits and . _ : - (starting alphanumeric)",
        ),
        ({"ods_code": "rba"}, "an ODS code is 3-12 capital letters (A-Z) and digits (0-9)"),
        ({"scopes": "  "}, "a client needs at least one scope"),
        (
            {"scopes": "system/Task.rs system/MedicationDispense.c system/Task.cu"},
            "a trust client may not hold system/MedicationDispense.c system/Task.cu",
        ),
    ],
)
def test_a_client_that_cannot_be_registered_is_refused_saying_why(
    db: Database, changes: dict[str, str], text: str
) -> None:
    arguments: dict[str, Any] = {
        "client_id": "trust-new",
        "role": Role.TRUST,
        "ods_code": "RBZ",
        "scopes": "system/Task.rs",
        "keys": KeySource(jwks={"keys": [public(EC_KEY)]}, jwks_url=None),
        "now": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    }
    arguments.update(changes)
    with pytest.raises(ClientRegistryError) as refused, db.write() as session:
        add_client(session, **arguments)
    assert str(refused.value) == text


def test_a_registered_client_is_enabled_and_stamped_in_utc(db: Database) -> None:
    moment = datetime(2026, 1, 2, 4, 4, 5, 678901, tzinfo=timezone(timedelta(hours=1)))
    with db.write() as session:
        add_client(
            session,
            client_id="trust-new",
            role=Role.TRUST,
            ods_code="RBZ",
            scopes="system/Task.rs",
            keys=KeySource(jwks={"keys": [public(EC_KEY)]}, jwks_url=None),
            now=moment,
        )
    with db.read() as session:
        client = get_client(session, "trust-new")
    assert client is not None and client.enabled is True
    assert client.created_at == client.updated_at == "2026-01-02T03:04:05.678901Z"


def test_a_client_id_is_checked_whole() -> None:
    assert check_client_id("trust-rba.app:1_a") == "trust-rba.app:1_a"
    for bad in ("", "a" * 101, "trust rba", "trust-rba\n"):
        with pytest.raises(ClientRegistryError):
            check_client_id(bad)


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone New York's, for the test (a server's need not be UTC)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_not_utc")
def test_a_stored_time_is_utc_with_microseconds_and_a_naive_one_is_refused() -> None:
    assert datetime(2026, 6, 1, tzinfo=UTC).astimezone().utcoffset() == timedelta(hours=-4)
    assert utc_text(datetime(2026, 11, 30, 23, 5, 6, 7, tzinfo=timezone(timedelta(hours=-2)))) == (
        "2026-12-01T01:05:06.000007Z"
    )
    with pytest.raises(ValueError) as refused:
        utc_text(datetime(2026, 11, 30))
    assert str(refused.value) == "naive datetimes are not stored; use an aware UTC datetime"


def test_an_audit_row_stores_its_words_and_drops_an_id_not_shaped_like_ours() -> None:
    record = AuditRecord(
        occurred_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        action=Action.ISSUE_TOKEN,
        outcome=Outcome.REFUSED,
        request_id="r-1",
        resource_type="Task",
        resource_id="../../etc/passwd 9434765919",
    )
    row = record.row()
    assert row["occurred_at"] == "2026-11-30T12:00:00.000000Z"
    assert (type(row["action"]), row["action"]) == (str, "issue-token")
    assert (type(row["outcome"]), row["outcome"]) == (str, "refused")
    assert row["resource_id"] is None
    assert set(row) == {field for field in AuditRecord.__dataclass_fields__}
    kept = AuditRecord(
        occurred_at=record.occurred_at,
        action=Action.ISSUE_TOKEN,
        outcome=Outcome.SUCCESS,
        request_id="r-2",
        resource_id="trust-rba",
    )
    assert kept.row()["resource_id"] == "trust-rba"


def test_a_role_without_a_ceiling_may_hold_no_scope_and_a_wildcard_covers_every_resource() -> None:
    assert beyond_role("auditor", ["system/Task.rs"]) == ["system/Task.rs"]
    assert beyond_role("trust", ["system/Task.rs", "system/Task.c"]) == ["system/Task.c"]
    wildcard = Scope.parse("system/*.rs")
    assert wildcard.covers(Scope.parse("system/Task.r"))
    assert not wildcard.covers(Scope.parse("system/Task.c"))
    assert not Scope.parse("system/Task.rs").covers(Scope.parse("system/Patient.r"))
