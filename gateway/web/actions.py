"""What a clinician does, through the same flows as the API (the one seam the pages act through).

- Cancelling builds the EPS `prescription-order-update` message the trust's own system would send
  (from the order as received, the trust as sender, every item still cancellable) and runs it
  through the intake path of `POST /fhir/$process-message`, as the signed-in person.
- Answering a query is the service behind `POST /fhir/Communication`.

Both are audited by those flows with the person's username (Caller.user_id).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from auth.identity import Caller
from auth.scopes import PRESCRIPTION_ORDER_UPDATE
from fhir_profiles.builder import build_cancellation
from fhir_profiles.identifiers import ORDER_ITEM_NUMBER_SYSTEM
from fhir_profiles.outcome import OperationOutcomeError
from gateway.api.deps import Services, run_for
from gateway.domain import access, intake, provider_queries, reads

# EPS cancellation reasons (https://fhir.nhs.uk/CodeSystem/medicationrequest-status-reason) a
# clinician may give.
CANCEL_REASONS: dict[str, str] = {
    "0001": "Prescribing Error",
    "0002": "Clinical contra-indication",
    "0003": "Change to medication treatment regime",
    "0004": "Clinical grounds",
    "0005": "At the Patient's request",
    "0007": "Notification of Death",
}


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What happened: cancelled now, waiting for the provider, or refused (with the reason)."""

    status_code: int
    cancelled: bool
    waiting_for_provider: bool
    message: str


def _diagnostics(body: bytes) -> str:
    try:
        outcome = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return "; ".join(str(issue.get("diagnostics", "")) for issue in outcome.get("issue", []) if issue)


def _cancellation_message(order: dict[str, Any], item_identifiers: set[str], reason: str) -> dict[str, Any]:
    requests = [
        entry["resource"]
        for entry in order.get("entry", [])
        if entry.get("resource", {}).get("resourceType") == "MedicationRequest"
    ]
    positions = [
        position
        for position, request in enumerate(requests)
        if any(
            identifier.get("system") == ORDER_ITEM_NUMBER_SYSTEM
            and identifier.get("value") in item_identifiers
            for identifier in request.get("identifier", [])
        )
    ]
    message = build_cancellation(order, item_positions=positions, reason=(reason, CANCEL_REASONS[reason]))
    # A fresh identity for this message; the trust it comes from is the order's sender, the caller's trust.
    message["id"] = str(uuid.uuid4())
    message["entry"][0]["resource"]["id"] = str(uuid.uuid4())
    return message


async def cancel_prescription(
    services: Services,
    *,
    caller: Caller,
    prescription_id: str,
    item_identifiers: set[str],
    reason: str,
    request_id: str,
) -> CancelOutcome:
    """Ask for the cancellation of the given items, exactly as the trust's system would."""
    if reason not in CANCEL_REASONS or not caller.holds(PRESCRIPTION_ORDER_UPDATE) or not item_identifiers:
        raise ValueError("a cancellation needs a known reason, items, and a caller who may cancel")
    order_bytes = await run_for(services, caller, request_id, reads.read_bundle, message_id=prescription_id)
    message = _cancellation_message(orjson.loads(order_bytes), item_identifiers, reason)
    body = orjson.dumps(message)
    try:
        # The one intake entry point, as POST /fhir/$process-message calls it (it audits refusals).
        answer = await intake.receive_message(
            services.context, body=body, document=message, caller=caller, request_id=request_id
        )
    except OperationOutcomeError as refusal:
        reasons = "; ".join(issue.diagnostics for issue in refusal.issues)
        return CancelOutcome(
            refusal.status_code, cancelled=False, waiting_for_provider=False, message=reasons
        )
    return CancelOutcome(
        answer.status_code,
        cancelled=answer.status_code == 200,
        waiting_for_provider=answer.status_code == 202,
        message=_diagnostics(answer.body),
    )


async def answer_query(
    services: Services, *, caller: Caller, item_id: str, text: str, request_id: str
) -> dict[str, Any]:
    """The trust's answer to a provider's query about one item: the Communication the API takes."""
    if not caller.holds(PRESCRIPTION_ORDER_UPDATE):
        raise access.missing_scope_error([PRESCRIPTION_ORDER_UPDATE])
    communication = {
        "resourceType": "Communication",
        "status": "completed",
        "about": [{"reference": f"Task/{item_id}"}],
        "payload": [{"contentString": text}],
    }
    result: dict[str, Any] = await run_for(
        services, caller, request_id, provider_queries.answer_query, communication=communication
    )
    return result
