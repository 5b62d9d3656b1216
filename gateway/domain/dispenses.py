"""Reading MedicationDispenses that providers sent, as tenancy allows."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from auth.audit import Action
from auth.identity import Caller
from auth.tenancy import visible_filter
from gateway.clock import Clock
from gateway.domain import access
from gateway.domain.reads import not_found
from gateway.store import status as store
from gateway.store.db import Database
from gateway.store.models import MedicationDispenseRecord

_dispense = MedicationDispenseRecord.__table__  # type: ignore[attr-defined]


def _query(caller: Caller) -> Any:
    item = store.item_table
    return (
        select(_dispense.c.id, _dispense.c.item_id, _dispense.c.resource, _dispense.c.created_at)
        .join(item, item.c.id == _dispense.c.item_id)
        .where(visible_filter(caller, tenant_column=item.c.tenant_ods, provider_column=item.c.provider_ods))
    )


def _render(row: Any) -> dict[str, Any]:
    resource: dict[str, Any] = orjson.loads(row[2])
    resource["id"] = row[0]
    resource["meta"] = {"lastUpdated": row[3].isoformat()}
    resource["authorizingPrescription"] = [{"reference": f"MedicationRequest/{row[1]}"}]
    resource.pop("contained", None)
    return resource


def read_dispense(
    db: Database, *, caller: Caller, dispense_id: str, request_id: str, clock: Clock
) -> dict[str, Any]:
    with db.read() as session:
        row = session.connection().execute(_query(caller).where(_dispense.c.id == dispense_id)).first()
    access.record_lookup(
        db,
        caller=caller,
        resource_type="MedicationDispense",
        resource_id=dispense_id,
        found=row is not None,
        request_id=request_id,
        clock=clock,
    )
    if row is None:
        raise not_found("MedicationDispense")
    return _render(row)


def dispenses_of_item(
    db: Database, *, caller: Caller, item_id: str, request_id: str, clock: Clock
) -> dict[str, Any]:
    with db.read() as session:
        rows = (
            session.connection()
            .execute(_query(caller).where(_dispense.c.item_id == item_id).order_by(_dispense.c.created_at))
            .all()
        )
    access.record_lookup(
        db,
        caller=caller,
        resource_type="MedicationDispense",
        resource_id=item_id,
        found=True,
        request_id=request_id,
        clock=clock,
        action=Action.SEARCH,
    )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": _render(row), "search": {"mode": "match"}} for row in rows],
    }
