"""Reading back what was stored, as the caller's tenancy allows, each read audited.

Another organisation's prescription answers exactly as a missing one does (404): existence must not
leak. The query itself carries the tenancy rule, as every search does.
"""

from __future__ import annotations

from typing import Any

import orjson

from auth.identity import Caller
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.domain import access
from gateway.domain.context import Context
from gateway.domain.status import Status, medication_request_status
from gateway.store import messages, prescriptions


def not_found(resource_type: str) -> OperationOutcomeError:
    return OperationOutcomeError(
        404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, f"No {resource_type} with this id")]
    )


def item_not_found() -> OperationOutcomeError:
    return OperationOutcomeError(
        404, [Issue(IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, "No line item (Task) with this identity")]
    )


def read_medication_request(ctx: Context, *, item_id: str, caller: Caller, request_id: str) -> dict[str, Any]:
    """One line item as the trust sent it, with the gateway's id and when it last changed."""
    item = access.audited_lookup(
        ctx.db,
        lambda tx: prescriptions.stored_item(tx, item_id, caller=caller),
        caller=caller,
        resource_type="MedicationRequest",
        resource_id=item_id,
        request_id=request_id,
        clock=ctx.clock,
        missing=lambda: not_found("MedicationRequest"),
    )
    resource: dict[str, Any] = orjson.loads(item.resource)
    resource["id"] = item.item_id
    resource["meta"] = {"lastUpdated": item.updated_at.isoformat()}
    # The status the gateway derives from the homecare lifecycle, not the one sent.
    resource["status"] = medication_request_status(Status(item.status))
    return resource


def read_bundle(ctx: Context, *, message_id: str, caller: Caller, request_id: str) -> bytes:
    """The prescription message exactly as received."""
    return access.audited_lookup(
        ctx.db,
        lambda tx: messages.prescription_body(tx, message_id, caller=caller),
        caller=caller,
        resource_type="Bundle",
        resource_id=message_id,
        request_id=request_id,
        clock=ctx.clock,
        missing=lambda: not_found("Bundle"),
    )
