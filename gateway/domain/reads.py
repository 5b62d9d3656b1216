"""Reading back what was stored, as the caller's tenancy allows, each read audited.

Another organisation's prescription answers exactly as a missing one does (404): existence must not
leak. The query itself carries the tenancy rule, as every search will.
"""

from __future__ import annotations

from typing import Any

import orjson

from auth.identity import Caller
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.clock import Clock
from gateway.domain import access
from gateway.domain.status import Status, medication_request_status
from gateway.store import prescriptions as store
from gateway.store.db import Database


def not_found(resource_type: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, f"No {resource_type} with this id")]
    )


def read_medication_request(
    db: Database, *, item_id: str, caller: Caller, request_id: str, clock: Clock
) -> dict[str, Any]:
    """One line item as the trust sent it, with the gateway's id and when it last changed."""
    with db.read() as session:
        found = store.get_item(session, item_id, visible=store.visible_to(caller))
    access.record_lookup(
        db,
        caller=caller,
        resource_type="MedicationRequest",
        resource_id=item_id,
        found=found is not None,
        request_id=request_id,
        clock=clock,
    )
    if found is None:
        raise not_found("MedicationRequest")
    item = found[0]
    resource: dict[str, Any] = orjson.loads(item.resource)
    resource["id"] = item.id
    resource["meta"] = {"lastUpdated": item.updated_at.isoformat()}
    # The status the gateway derives from the homecare lifecycle, not the one sent.
    resource["status"] = medication_request_status(Status(item.status))
    return resource


def read_bundle(db: Database, *, message_id: str, caller: Caller, request_id: str, clock: Clock) -> bytes:
    """The prescription message exactly as received."""
    with db.read() as session:
        body = store.get_message_body(session, message_id, visible=store.visible_to(caller))
    access.record_lookup(
        db,
        caller=caller,
        resource_type="Bundle",
        resource_id=message_id,
        found=body is not None,
        request_id=request_id,
        clock=clock,
    )
    if body is None:
        raise not_found("Bundle")
    return body
