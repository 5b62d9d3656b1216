"""Logs are JSON lines with request ids, and never carry patient data or query strings."""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import orjson
import pytest
from sqlalchemy import text

from fhir_profiles.builder import PrescriptionMessageBuilder, break_message
from gateway.logs import configure_logging
from gateway.store.db import Database
from tests.support import RunningServer


@pytest.fixture
def json_logs() -> None:
    configure_logging(level="INFO", json=True)


def test_log_lines_are_json_with_ids_and_no_patient_data(
    json_logs: None, client: httpx.Client, db: Database, capfd: pytest.CaptureFixture[str]
) -> None:
    message = PrescriptionMessageBuilder(seed=41).build(items=2)
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    nhs_number = patient["identifier"][0]["value"]
    secrets = [
        nhs_number,
        patient["name"][0]["family"],
        patient["birthDate"],
        patient["address"][0]["postalCode"],
    ]
    request_id = str(uuid.uuid4())
    headers = {"Content-Type": "application/fhir+json", "X-Request-ID": request_id}

    accepted = client.post("/fhir/$process-message", content=orjson.dumps(message), headers=headers)
    assert accepted.status_code == 200
    refused = client.post(
        "/fhir/$process-message",
        content=orjson.dumps(break_message(message, "deceased-patient")),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert refused.status_code in (409, 422)
    client.post(
        "/fhir/$process-message",
        content=b'{"resourceType": "Bundle", "x": "' + nhs_number.encode() + b'"',
        headers={"Content-Type": "application/fhir+json"},
    )
    client.get(f"/fhir/MedicationRequest?patient.identifier={nhs_number}&name={secrets[1]}")
    client.get(f"/fhir/Patient/{nhs_number}")

    output = capfd.readouterr().out
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "the gateway logged nothing"
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r.get("event") == "request"]
    assert len(access) >= 5
    assert all("request_id" in r and "status" in r and "route" in r for r in access)
    assert any(r["request_id"] == request_id and r["status"] == 200 for r in access)
    for secret in secrets:
        assert secret not in output, "patient data reached the log"


def test_a_client_that_hangs_up_mid_body_is_no_server_error(
    json_logs: None,
    client: httpx.Client,
    server: RunningServer,
    db: Database,
    capfd: pytest.CaptureFixture[str],
) -> None:
    body = orjson.dumps(PrescriptionMessageBuilder(seed=42).build(items=1))
    head = (
        "POST /fhir/$process-message HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {client.headers['authorization']}\r\nContent-Type: application/fhir+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.2)
    output = ""
    deadline = time.monotonic() + 10
    while "client_disconnected" not in output and time.monotonic() < deadline:
        time.sleep(0.05)
        output += capfd.readouterr().out
    assert "client_disconnected" in output
    assert "unhandled_error" not in output
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM inbound_message")).scalar_one() == 0
    assert (
        client.post(
            "/fhir/$process-message", content=body, headers={"Content-Type": "application/fhir+json"}
        ).status_code
        == 200
    )
