"""The audit log: rows for every read, write and refusal, no patient data, and a chain that tells
when a row was edited, deleted or moved; on both backends, through the function and the CLI."""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import Connection, text
from sqlmodel import col, select
from typer.testing import CliRunner

from auth import audit
from auth.identity import Caller, Role
from auth.models import AuditEvent
from fhir_profiles.builder import PrescriptionMessageBuilder, break_message
from gateway.app import create_app
from gateway.cli import app as cli
from gateway.settings import Settings
from gateway.store import audit as store_audit
from gateway.store.audit import seal_audit_log
from gateway.store.db import Database
from tests.support import RunningServer, Tenant, access_token

FHIR_JSON = {"Content-Type": "application/fhir+json"}
AsTenant = Callable[..., httpx.Client]


def events(db: Database) -> list[AuditEvent]:
    with db.read() as session:
        return list(session.execute(select(AuditEvent).order_by(col(AuditEvent.id))).scalars())


def verify(db: Database, **options: object) -> audit.Verification:
    with db.read() as session:
        return audit.verify(
            session,
            now=datetime.now(UTC),
            max_unsealed_age=timedelta(seconds=60),
            **options,  # type: ignore[arg-type]
        )


def post(http: httpx.Client, message: object) -> httpx.Response:
    return http.post("/fhir/$process-message", content=orjson.dumps(message), headers=FHIR_JSON)


def test_writes_reads_and_refusals_are_audited_without_patient_data(
    as_tenant: AsTenant, db: Database
) -> None:
    rba = as_tenant("trust-rba")
    message = PrescriptionMessageBuilder().build(items=2)
    nhs_number = message["entry"][3]["resource"]["identifier"][0]["value"]
    accepted = post(rba, message)
    assert accepted.status_code == 200
    bundle_id = accepted.headers["location"].rpartition("/")[2]
    assert post(rba, message).status_code == 200  # replayed
    assert (
        post(
            rba, break_message(PrescriptionMessageBuilder().build(items=1), "bad-nhs-check-digit")
        ).status_code
        == 400
    )
    assert rba.get(f"/fhir/Bundle/{bundle_id}").status_code == 200
    assert as_tenant("trust-rbb").get(f"/fhir/Bundle/{bundle_id}").status_code == 404

    rows = [(e.client_id, e.action, e.resource_type, e.resource_id, e.outcome, e.status) for e in events(db)]
    api_rows = [row for row in rows if row[1] != "issue-token"]
    assert api_rows == [
        ("trust-rba", "create", "Bundle", bundle_id, "success", 200),
        ("trust-rba", "create", "Bundle", bundle_id, "replayed", 200),
        ("trust-rba", "create", "Bundle", None, "refused", 400),
        ("trust-rba", "read", "Bundle", bundle_id, "success", 200),
        ("trust-rbb", "read", "Bundle", bundle_id, "not-found", 404),
    ]
    assert all(e.request_id and e.ods_code and e.role for e in events(db))
    with db.read() as session:
        dump = repr(session.execute(text("SELECT * FROM audit_event")).all())
    assert nhs_number not in dump


def test_the_audit_row_of_an_accepted_order_is_in_its_transaction(as_tenant: AsTenant, db: Database) -> None:
    rba = as_tenant("trust-rba")
    builder = PrescriptionMessageBuilder(seed=7)
    first = builder.build(items=1)
    assert post(rba, first).status_code == 200
    clash = builder.build(items=1, short_form_id=first["entry"][1]["resource"]["groupIdentifier"]["value"])
    assert post(rba, clash).status_code == 409  # the insert fails: its success row must not survive
    outcomes = [e.outcome for e in events(db) if e.action == "create"]
    assert outcomes == ["success", "refused"]


def test_a_scope_refusal_is_audited(as_tenant: AsTenant, db: Database) -> None:
    writer = as_tenant("trust-rba", scope="system/MedicationRequest.c")
    some_id = str(uuid.uuid4())
    assert writer.get(f"/fhir/MedicationRequest/{some_id}").status_code == 403
    (refusal,) = [e for e in events(db) if e.outcome == "refused"]
    assert (refusal.action, refusal.resource_type, refusal.resource_id, refusal.reason) == (
        "read",
        "MedicationRequest",
        some_id,
        "insufficient_scope",
    )


def _audited_activity(http: httpx.Client) -> None:
    for seed in range(3):
        response = post(http, PrescriptionMessageBuilder(seed=100 + seed).build(items=1))
        assert response.status_code == 200
        http.get(response.headers["location"])


def test_a_sealed_chain_verifies(as_tenant: AsTenant, db: Database) -> None:
    _audited_activity(as_tenant("trust-rba"))
    assert seal_audit_log(db) == len(events(db)) > 6
    result = verify(db)
    assert result.ok, result.problem
    assert result.head is not None and result.head.seq == result.sealed == len(events(db))
    assert verify(db, anchors=[result.head]).ok


def _sealed_rows(db: Database, http: httpx.Client) -> list[AuditEvent]:
    _audited_activity(http)
    seal_audit_log(db)
    rows = sorted(events(db), key=lambda e: e.seq or 0)
    assert verify(db).ok
    return rows


def test_verify_names_an_edited_row(as_tenant: AsTenant, db: Database) -> None:
    rows = _sealed_rows(db, as_tenant("trust-rba"))
    target = rows[3]
    with db.write() as session:
        session.execute(
            text("UPDATE audit_event SET client_id = 'trust-rbb' WHERE id = :id"), {"id": target.id}
        )
    result = verify(db)
    assert not result.ok
    assert f"audit row id {target.id} (seq {target.seq}) was edited" in str(result.problem)


def test_verify_names_a_deleted_row(as_tenant: AsTenant, db: Database) -> None:
    rows = _sealed_rows(db, as_tenant("trust-rba"))
    target = rows[2]
    with db.write() as session:
        session.execute(text("DELETE FROM audit_event WHERE id = :id"), {"id": target.id})
    result = verify(db)
    assert not result.ok
    assert f"seq {target.seq} missing after audit row id {rows[1].id}" in str(result.problem)
    assert "deleted" in str(result.problem)


def test_verify_names_reordered_rows(as_tenant: AsTenant, db: Database) -> None:
    rows = _sealed_rows(db, as_tenant("trust-rba"))
    first, second = rows[4], rows[5]
    with db.write() as session:
        session.execute(text("UPDATE audit_event SET seq = -1 WHERE id = :id"), {"id": first.id})
        session.execute(
            text("UPDATE audit_event SET seq = :seq WHERE id = :id"), {"seq": first.seq, "id": second.id}
        )
        session.execute(
            text("UPDATE audit_event SET seq = :seq WHERE id = :id"), {"seq": second.seq, "id": first.id}
        )
    result = verify(db)
    assert not result.ok
    assert f"audit row id {second.id} (seq {first.seq}) is out of order" in str(result.problem)
    assert "reordered" in str(result.problem)


def test_verify_notices_a_rewritten_chain_or_a_lost_tail_through_an_anchor(
    as_tenant: AsTenant, db: Database
) -> None:
    rows = _sealed_rows(db, as_tenant("trust-rba"))
    head = verify(db).head
    assert head is not None
    with db.write() as session:
        session.execute(text("DELETE FROM audit_event WHERE id = :id"), {"id": rows[-1].id})
    assert verify(db).ok, "without an anchor a lost tail is invisible"
    result = verify(db, anchors=[head])
    assert not result.ok and "beyond the end of the chain" in str(result.problem)


def test_verify_flags_rows_left_unsealed_too_long(db: Database) -> None:
    old = datetime.now(UTC) - timedelta(minutes=5)
    with db.write() as session:
        audit.append(
            session.connection(),
            [audit.AuditRecord(occurred_at=old, action=audit.Action.READ, outcome=audit.Outcome.SUCCESS)],
        )
    result = verify(db)
    assert not result.ok and "still unsealed" in str(result.problem)
    seal_audit_log(db)
    assert verify(db).ok


def _cli_env(db: Database, settings: Settings) -> dict[str, str]:
    return {
        "DATABASE_URL": db.url.render_as_string(hide_password=False),
        "HOMECARE_DATA_DIR": str(settings.data_dir),
        "HOMECARE_ENVIRONMENT": "development",
    }


def test_the_audit_commands_seal_and_catch_a_tampered_row(
    as_tenant: AsTenant, db: Database, settings: Settings
) -> None:
    _audited_activity(as_tenant("trust-rba"))
    runner = CliRunner()
    env = _cli_env(db, settings)
    sealed = runner.invoke(cli, ["audit", "seal"], env=env)
    assert sealed.exit_code == 0, sealed.output
    intact = runner.invoke(cli, ["audit", "verify"], env=env)
    assert intact.exit_code == 0, intact.output
    assert "intact" in intact.output
    target = sorted(events(db), key=lambda e: e.seq or 0)[1]
    with db.write() as session:
        session.execute(
            text("UPDATE audit_event SET outcome = 'not-found' WHERE id = :id"), {"id": target.id}
        )
    tampered = runner.invoke(cli, ["audit", "verify"], env=env)
    assert tampered.exit_code == 1
    assert f"audit row id {target.id}" in tampered.output and "edited" in tampered.output


def test_the_server_seals_by_itself(
    database: Database, db: Database, settings: Settings, tenants: dict[str, Tenant]
) -> None:
    sealing = settings.model_copy(update={"audit_seal_seconds": 0.2})
    with RunningServer(create_app(sealing, db=database)) as server:
        access_token(server, tenants["trust-rba"])
        deadline = time.monotonic() + 10
        while any(e.seq is None for e in events(db)) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert events(db) and all(e.seq is not None for e in events(db))
    assert verify(db).ok


@pytest.mark.parametrize("text_anchor", ["12", "x:abc", "3:" + "0" * 10])
def test_an_anchor_must_be_seq_and_hash(text_anchor: str) -> None:
    with pytest.raises(ValueError, match="SEQ:HASH"):
        audit.ChainHead.parse(text_anchor)


def test_an_anchor_catches_a_chain_rewritten_to_be_consistent_again(
    as_tenant: AsTenant, db: Database, settings: Settings
) -> None:
    rows = _sealed_rows(db, as_tenant("trust-rba"))
    middle = audit.ChainHead(int(rows[3].seq or 0), str(rows[3].row_hash))
    head = verify(db).head
    assert head is not None and verify(db, anchors=[middle, head]).ok
    # Someone edits a row and seals the whole log again: the chain holds together by itself.
    with db.write() as session:
        session.execute(
            text("UPDATE audit_event SET client_id = 'trust-rbb' WHERE id = :id"), {"id": rows[1].id}
        )
        session.execute(text("UPDATE audit_event SET seq = NULL, prev_hash = NULL, row_hash = NULL"))
    seal_audit_log(db)
    assert verify(db).ok, "without an anchor a rewritten chain is invisible"
    for anchor in (middle, head):
        result = verify(db, anchors=[anchor])
        assert not result.ok and f"anchor {anchor} does not match the chain" in str(result.problem)
    refused = CliRunner().invoke(cli, ["audit", "verify", "--anchor", str(head)], env=_cli_env(db, settings))
    assert refused.exit_code == 1, refused.output
    assert "does not match the chain" in " ".join(refused.output.split())


def _append(db: Database, *times: datetime) -> None:
    with db.write() as session:
        audit.append(
            session.connection(),
            [
                audit.AuditRecord(occurred_at=at, action=audit.Action.READ, outcome=audit.Outcome.SUCCESS)
                for at in times
            ],
        )


def test_the_row_hash_is_sha256_of_the_previous_hash_and_the_canonical_json() -> None:
    # Written out independently: keys sorted, no spaces, non-ASCII escaped.
    canonical = '{"action":"read","reason":"caf\\u00e9","status":200}'
    expected = hashlib.sha256(f"{audit.GENESIS_HASH}\n{canonical}".encode()).hexdigest()
    content = {"status": 200, "reason": "café", "action": "read"}
    assert audit.row_hash(audit.GENESIS_HASH, content) == expected


def test_sealing_in_batches_continues_the_chain_from_its_head(db: Database) -> None:
    start = datetime.now(UTC)
    _append(db, *(start + timedelta(milliseconds=n) for n in range(5)))
    with db.write() as session:
        assert audit.seal(session, limit=2) == 2
    first = [e for e in events(db) if e.seq is not None]
    assert [e.seq for e in first] == [1, 2], "the oldest rows, by id, are sealed first"
    assert [e.id for e in first] == [e.id for e in events(db)[:2]]
    assert seal_audit_log(db, batch=2) == 3
    rows = sorted(events(db), key=lambda e: e.seq or 0)
    assert [e.seq for e in rows] == [1, 2, 3, 4, 5]
    assert [e.id for e in rows] == [e.id for e in events(db)]
    assert rows[0].prev_hash == audit.GENESIS_HASH
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.row_hash
    result = verify(db)
    assert result.ok, result.problem
    assert result.head == audit.ChainHead(5, str(rows[-1].row_hash))
    with db.write() as session:
        assert audit.seal(session) == 0


def test_a_plan_made_before_another_sealer_sealed_is_dropped(db: Database) -> None:
    start = datetime.now(UTC)
    _append(db, *(start + timedelta(milliseconds=n) for n in range(3)))
    with db.snapshot() as tx:
        stale = audit.plan_seal(tx.connection)
    assert [change["seq"] for change in stale.changes] == [1, 2, 3] and stale.head is None
    assert seal_audit_log(db, batch=2) == 3
    _append(db, start + timedelta(seconds=1))
    with db.transaction() as tx:
        assert audit.apply_seal(tx.connection, stale) == 0, "the chain moved since the plan"
    assert seal_audit_log(db) == 1
    result = verify(db)
    assert result.ok and result.head is not None and result.head.seq == 4, result.problem


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # the lock of SQLite's single writer
def test_the_sealer_hashes_without_holding_the_write_lock(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing a batch takes tens of milliseconds: on SQLite every intake commit would wait for it."""
    _append(db, *(datetime.now(UTC) for _ in range(3)))
    write_lock = db._write_lock
    assert write_lock is not None
    held: list[bool] = []
    hash_row = audit.row_hash

    def watched(prev_hash: str, content: dict[str, object]) -> str:
        held.append(write_lock.locked())
        return hash_row(prev_hash, content)

    monkeypatch.setattr(audit, "row_hash", watched)
    stored: list[int] = []
    apply = store_audit.apply_seal

    def counted(connection: Connection, plan: audit.SealPlan) -> int:
        stored.append(len(plan.changes))
        return apply(connection, plan)

    monkeypatch.setattr(store_audit, "apply_seal", counted)
    assert seal_audit_log(db, batch=2) == 3
    assert held == [False, False, False]
    assert stored == [2, 1], "each write transaction stores one batch"
    assert verify(db).ok


def test_an_empty_log_verifies_with_no_head(db: Database) -> None:
    result = verify(db)
    assert result == audit.Verification(sealed=0, unsealed=0, head=None, problem=None)


def test_a_tampered_chain_is_reported_even_with_young_unsealed_rows(db: Database) -> None:
    _append(db, *(datetime.now(UTC) for _ in range(3)))
    seal_audit_log(db)
    target = sorted(events(db), key=lambda e: e.seq or 0)[1]
    with db.write() as session:
        session.execute(
            text("UPDATE audit_event SET client_id = 'trust-rbb' WHERE id = :id"), {"id": target.id}
        )
    _append(db, datetime.now(UTC))
    result = verify(db)
    assert result.unsealed == 1
    assert not result.ok and f"audit row id {target.id} (seq {target.seq}) was edited" in str(result.problem)


def test_an_anchor_beyond_the_end_names_the_last_seq(db: Database) -> None:
    _append(db, *(datetime.now(UTC) for _ in range(2)))
    seal_audit_log(db)
    result = verify(db, anchors=[audit.ChainHead(3, "0" * 64)])
    assert result.problem == (
        f"anchor 3:{'0' * 64} is beyond the end of the chain (seq 2): sealed rows were deleted"
    )


def test_unsealed_rows_are_flagged_only_when_older_than_the_limit(db: Database) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    limit = timedelta(seconds=60)
    _append(db, now - timedelta(seconds=30), now - limit)
    with db.read() as session:
        assert audit.verify(session, now=now, max_unsealed_age=limit).ok, "young, or exactly at the limit"
    _append(db, now - timedelta(seconds=90))
    oldest = events(db)[-1]
    with db.read() as session:
        result = audit.verify(session, now=now, max_unsealed_age=limit)
    assert result.unsealed == 3
    assert result.problem is not None
    assert result.problem.startswith(f"audit row id {oldest.id} (recorded ")
    assert "after more than 60 s" in result.problem


@pytest.mark.parametrize("text_anchor", ["x:" + "0" * 64, "-1:" + "0" * 64, "1:2:" + "0" * 62])
def test_an_anchor_seq_is_a_plain_number(text_anchor: str) -> None:
    with pytest.raises(ValueError, match=r"^an anchor is SEQ:HASH, as `audit verify` prints it$"):
        audit.ChainHead.parse(text_anchor)


def test_an_anchor_is_read_with_its_hash_in_lower_case() -> None:
    assert audit.ChainHead.parse("7:" + "AB" * 32) == audit.ChainHead(7, "ab" * 32)


def test_a_coalesced_refusals_count_source_and_route_are_sealed_into_its_hash(db: Database) -> None:
    at = datetime.now(UTC)
    with db.write() as session:
        audit.append(
            session.connection(),
            [
                audit.AuditRecord(occurred_at=at, action=audit.Action.READ, outcome=audit.Outcome.SUCCESS),
                audit.AuditRecord(
                    occurred_at=at,
                    action=audit.Action.REQUEST,
                    outcome=audit.Outcome.THROTTLED,
                    status=429,
                    count=7,
                    source="192.0.2.10",
                    route="/fhir/Task",
                ),
            ],
        )
    seal_audit_log(db)
    plain, refusal = events(db)
    # Written out: every row's 13 columns; the three later ones only where set (older rows keep their hashes).
    columns = (
        *("id", "occurred_at", "request_id", "client_id", "user_id", "role", "ods_code", "action"),
        *("resource_type", "resource_id", "outcome", "status", "reason"),
    )
    content = {name: getattr(plain, name) for name in columns}
    assert plain.row_hash == audit.row_hash(audit.GENESIS_HASH, content)
    content = {name: getattr(refusal, name) for name in columns}
    content |= {"count": 7, "source": "192.0.2.10", "route": "/fhir/Task"}
    assert refusal.row_hash == audit.row_hash(str(plain.row_hash), content)
    for edit in ("count = 1", "source = '198.51.100.1'", "route = '/fhir/Bundle'"):
        with db.write() as session:
            session.execute(text(f"UPDATE audit_event SET {edit} WHERE id = :id"), {"id": refusal.id})
        result = verify(db)
        assert f"audit row id {refusal.id} (seq 2) was edited" in str(result.problem), edit
        with db.write() as session:
            session.execute(
                text(
                    "UPDATE audit_event SET count = 7, source = '192.0.2.10', route = '/fhir/Task' WHERE id = :id"
                ),
                {"id": refusal.id},
            )
        assert verify(db).ok


def _sealed_chain(db: Database, length: int) -> list[AuditEvent]:
    with db.write() as session:
        session.execute(text("DELETE FROM audit_event"))
    _append(db, *(datetime.now(UTC) for _ in range(length)))
    seal_audit_log(db)
    return sorted(events(db), key=lambda e: e.seq or 0)


def _tamper(db: Database, statement: str, **values: object) -> str | None:
    with db.write() as session:
        session.execute(text(statement), values)
    return verify(db).problem


def test_verify_names_each_break_of_the_chain_in_full(db: Database) -> None:
    rows = _sealed_chain(db, 5)
    assert _tamper(db, "DELETE FROM audit_event WHERE id = :id", id=rows[0].id) == (
        f"seq 1 missing at the start of the chain, before audit row id {rows[1].id} (seq 2): "
        "audit rows were deleted"
    )
    rows = _sealed_chain(db, 5)
    assert _tamper(db, "DELETE FROM audit_event WHERE id IN (:a, :b)", a=rows[1].id, b=rows[2].id) == (
        f"seqs 2-3 missing after audit row id {rows[0].id} (seq 1), before audit row id {rows[3].id} (seq 4): "
        "audit rows were deleted"
    )
    rows = _sealed_chain(db, 5)
    assert _tamper(db, "UPDATE audit_event SET prev_hash = :h WHERE id = :id", h="f" * 64, id=rows[2].id) == (
        f"audit row id {rows[2].id} (seq 3) does not follow the row after audit row id {rows[1].id} (seq 2): "
        "that row was rewritten, or a row between them was deleted"
    )
    rows = _sealed_chain(db, 5)
    assert _tamper(db, "UPDATE audit_event SET prev_hash = :h WHERE id = :id", h="f" * 64, id=rows[0].id) == (
        f"audit row id {rows[0].id} (seq 1) does not follow the row at the start of the chain: "
        "that row was rewritten, or a row between them was deleted"
    )


def test_verify_reports_a_moved_row_even_when_two_rows_carry_its_hash(db: Database) -> None:
    rows = _sealed_chain(db, 5)
    copied = str(rows[0].row_hash)
    with db.write() as session:
        session.execute(
            text("UPDATE audit_event SET row_hash = :h WHERE id = :id"), {"h": copied, "id": rows[4].id}
        )
    problem = _tamper(db, "UPDATE audit_event SET prev_hash = :h WHERE id = :id", h=copied, id=rows[2].id)
    assert str(problem).startswith(f"audit row id {rows[2].id} (seq 3) is out of order: it was sealed after ")
    assert str(problem).endswith(
        f"but now stands after audit row id {rows[1].id} (seq 2): audit rows were reordered"
    )


def test_an_anchor_of_a_log_with_no_sealed_rows_is_beyond_its_end(db: Database) -> None:
    result = verify(db, anchors=[audit.ChainHead(1, "a" * 64)])
    assert (
        result.problem
        == f"anchor 1:{'a' * 64} is beyond the end of the chain (seq 0): sealed rows were deleted"
    )


def test_a_callers_audit_record_names_the_person_behind_it_and_the_reason() -> None:
    at = datetime.now(UTC)
    caller = Caller("clinician-app-rba", Role.CLINICIAN_APP, "RBA", user_id="staff-4021")
    record = audit.AuditRecord.by(
        caller,
        action=audit.Action.READ,
        outcome=audit.Outcome.REFUSED,
        occurred_at=at,
        request_id="req-1",
        resource_type="Task",
        resource_id="task-1",
        status=403,
        reason="insufficient_scope",
    )
    assert record == audit.AuditRecord(
        occurred_at=at,
        action=audit.Action.READ,
        outcome=audit.Outcome.REFUSED,
        request_id="req-1",
        client_id="clinician-app-rba",
        user_id="staff-4021",
        role="clinician-app",
        ods_code="RBA",
        resource_type="Task",
        resource_id="task-1",
        status=403,
        reason="insufficient_scope",
    )
