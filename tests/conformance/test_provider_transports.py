"""The provider role's own HL7 v2 and CSV readings checked against the other reading: the adapters'
codec and simulators (the suite shares no code with them, so each catches the other's misreading)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.csv_drop.formats import read_order_file
from adapters.hl7v2_mllp.codec import parse
from adapters.hl7v2_mllp.messages import build_ack
from adapters.hl7v2_mllp.simulator import status_message
from adapters.simulation.lifecycle import TOO_LATE_TO_CANCEL, Reason
from adapters.simulation.order_book import LifecycleEvent
from conformance.messages import MessageBuilder
from conformance.roles.provider import hl7
from conformance.roles.provider.base import control_id, order_facts
from conformance.roles.provider.files import order_csv, write_once
from conformance.roles.provider.mllp import _judged

WHEN = datetime(2026, 11, 23, 9, 30, 15, tzinfo=UTC)


def event(status: str, reason: Reason | None = None) -> LifecycleEvent:
    return LifecycleEvent(1, "key", "C63F0C-A99968-D0E87S", "item-1", status, WHEN, reason)


@pytest.mark.parametrize(
    "status",
    [
        "accepted",
        "rejected",
        "query",
        "cancelled",
        "in-preparation",
        "dispensed",
        "delivery-scheduled",
        "out-for-delivery",
        "delivery-failed",
        "delivered",
    ],
)
def test_every_status_the_mllp_simulator_sends_reads_back_as_that_status(status: str) -> None:
    message_type = "RDS^O13" if status == "dispensed" else "ORR^O02"
    text = status_message("VNCEL", message_type, "CTRL1", [event(status)])
    key, reports = hl7.status_reports(text.encode())
    assert key == "VNCEL/CTRL1"
    [report] = reports
    assert report.problem is None
    task = report.task
    assert task["businessStatus"]["coding"][0]["code"] == status
    assert task["focus"]["identifier"]["value"] == "item-1"
    assert task["basedOn"][0]["identifier"]["value"] == "C63F0C-A99968-D0E87S"
    assert task["owner"]["identifier"]["value"] == "VNCEL"
    assert task["lastModified"] == "2026-11-23T09:30:15+00:00"


def test_a_refused_cancellation_and_its_reason_read_back() -> None:
    text = status_message("VNCEL", "ORR^O02", "CTRL2", [event("cancel-refused", TOO_LATE_TO_CANCEL)])
    [report] = hl7.status_reports(text.encode())[1]
    assert report.task["businessStatus"]["coding"][0]["code"] == "cancel-refused"
    assert report.task["statusReason"]["coding"][0]["code"] == "too-late-to-cancel"


def test_an_order_control_the_readme_does_not_map_is_a_problem_not_a_guess() -> None:
    raw = b"MSH|^~\\&|PHARMACY|VNCEL|GW|GW|20261123093015||ORR^O02^ORR_O02|C3|P|2.5\rORC|XX|item-1||SF-1"
    [report] = hl7.status_reports(raw)[1]
    assert report.problem is not None and "ORC-1 'XX'" in report.problem
    assert report.task["lastModified"] == "2026-11-23T09:30:15+00:00"  # no offset: Europe/London (GMT)


def test_the_suites_rde_o11_reads_as_the_adapters_codec_reads_it() -> None:
    builder = MessageBuilder("RBA")
    order = builder.order("VNCEL", items=2)
    for message, control in ((order, "NW"), (builder.cancellation(order), "CA")):
        text = hl7.order_message(order_facts(message), control_id=control_id("key"), now=WHEN)
        parsed = parse(text.encode())
        assert parsed.message_type == "RDE^O11" and parsed.control_id == control_id("key")
        assert parsed.msh.component(6) == "VNCEL"
        orcs = parsed.named("ORC")
        assert [orc.field(1) for orc in orcs] == [control, control]
        assert [orc.component(2) for orc in orcs] == order.item_ids
        assert {orc.component(4) for orc in orcs} == {order.short_form_id}
    broken = hl7.order_message(order_facts(order), control_id="C", now=WHEN, invalid=True)
    assert {orc.component(4) for orc in parse(broken.encode()).named("ORC")} == {""}


@pytest.mark.parametrize(
    ("code", "error", "accepted", "refusal"),
    [
        ("AA", None, True, False),
        ("AE", "204", False, True),
        ("AR", "207", False, False),
        ("AE", "205", True, False),
    ],
)
def test_acks_are_judged_as_the_readme_says(
    code: str, error: str | None, accepted: bool, refusal: bool
) -> None:
    received = "MSH|^~\\&|GW|GW|PHARMACY|VNCEL|20261123093015||RDE^O11^RDE_O11|C1|P|2.5"
    reason = None if code == "AA" else "Not this provider"
    ack = hl7.read_ack(
        build_ack(received, code=code, control_id="A1", now=WHEN, reason=reason, error_code=error).encode()
    )
    judged = _judged(ack, None)
    assert (judged.accepted, judged.permanent_refusal) == (accepted, refusal)
    if refusal:
        assert judged.reason == "Not this provider"


def test_the_suites_order_file_reads_as_the_simulator_reads_it(tmp_path: Path) -> None:
    order = MessageBuilder("RBA").order("VNCEL", items=2)
    rows = read_order_file(order_csv(order, key="order-key", invalid=False))
    assert [row["item_identifier"] for row in rows] == order.item_ids
    assert {(row["short_form_id"], row["provider_ods"], row["message_type"]) for row in rows} == {
        (order.short_form_id, "VNCEL", "new")
    }
    assert "short_form_id" not in read_order_file(order_csv(order, key="k", invalid=True))[0]
    assert write_once(tmp_path, "order-key.csv", b"first") is True
    assert write_once(tmp_path, "order-key.csv", b"second") is False  # never replaces a file there
    assert (tmp_path / "order-key.csv").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["order-key.csv"]  # no temporary left behind
