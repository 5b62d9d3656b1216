"""Reading what the gateway recorded, for the end-to-end tests of the adapters."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text

from fhir_profiles.builder import Message
from gateway.domain.tasks import VERDICT_URL
from gateway.store.db import Database

HAPPY_PATH = [
    "accepted",
    "in-preparation",
    "dispensed",
    "delivery-scheduled",
    "out-for-delivery",
    "delivered",
]
DELIVERED_FAST: dict[str, Any] = {"step_delay_seconds": 0.02, "seed": 11}


def history(client: httpx.Client, item_id: str) -> list[tuple[str, str, str]]:
    """(status, source, verdict) of every event of the item, oldest first."""
    bundle = client.get(f"/fhir/Task/{item_id}/_history").json()
    steps = []
    for entry in bundle["entry"]:
        task = entry["resource"]
        marks = next(e["extension"] for e in task["extension"] if e["url"] == VERDICT_URL)
        values = {mark["url"]: next(v for k, v in mark.items() if k.startswith("value")) for mark in marks}
        steps.append((task["businessStatus"]["coding"][0]["code"], values["source"], values["verdict"]))
    return steps


def applied_statuses(client: httpx.Client, item_id: str) -> list[str]:
    """The item's statuses as applied (the journey and the reports that took effect), in order."""
    return [status for status, _, verdict in history(client, item_id) if verdict == "applied"]


def short_form_of(message: Message) -> str:
    return str(
        next(
            entry["resource"]["groupIdentifier"]["value"]
            for entry in message["entry"]
            if entry["resource"]["resourceType"] == "MedicationRequest"
        )
    )


def item_identifiers_of(message: Message) -> list[str]:
    return [
        entry["resource"]["identifier"][0]["value"]
        for entry in message["entry"]
        if entry["resource"]["resourceType"] == "MedicationRequest"
    ]


def scalar(db: Database, sql: str, **parameters: Any) -> Any:
    with db.read() as session:
        return session.execute(text(sql), parameters).scalar_one()


def rows(db: Database, sql: str, **parameters: Any) -> list[Any]:
    with db.read() as session:
        return list(session.execute(text(sql), parameters).all())


def dispenses_of(client: httpx.Client, item_id: str) -> list[dict[str, Any]]:
    bundle = client.get("/fhir/MedicationDispense", params={"prescription": f"MedicationRequest/{item_id}"})
    assert bundle.status_code == 200, bundle.text
    return [entry["resource"] for entry in bundle.json().get("entry", [])]
