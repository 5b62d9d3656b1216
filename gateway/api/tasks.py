"""Status through one interface: `Task` reads, searches, history, and providers' status reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Security
from starlette.responses import Response

from auth.identity import Caller
from auth.scopes import READ_TASKS, UPDATE_TASKS
from fhir_profiles.identifiers import (
    is_item_identifier,
    is_nhs_number_shaped,
    is_ods_code,
    is_short_form_id_shaped,
)
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError
from gateway.api.deps import Services, ServicesDep, authorise, for_caller
from gateway.api.documentation import form_body, query_parameters
from gateway.api.process_message import read_fhir_json_body
from gateway.api.responses import FhirResponse
from gateway.api.schemas import fhir_body, fhir_content, outcome_responses
from gateway.domain import status_reports, task_reads
from gateway.domain.status_authority import Applied

router = APIRouter(tags=["status"])

TaskReader = Annotated[Caller, Security(authorise, scopes=[READ_TASKS])]
StatusReporter = Annotated[Caller, Security(authorise, scopes=[UPDATE_TASKS])]

_TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The Task as the gateway now holds it", "content": fhir_content("FhirResource")},
    **outcome_responses(400, 401, 403, 404, 409, 413, 415),
}


async def _report(
    request: Request, caller: Caller, services: Services, writes: list[status_reports.TaskWrite]
) -> list[Applied]:
    applied = await for_caller(services, request, caller, status_reports.report_statuses, writes=writes)
    services.context.wake_dispatcher()  # notifications for subscribers are queued: send them now
    return applied


def _answer(applied: Applied) -> Response:
    return FhirResponse(
        applied.task,
        headers={
            "ETag": f'W/"{applied.view.version}"',
            "X-Status-Verdict": applied.verdict.value,
            "Content-Location": f"/fhir/Task/{applied.view.item_id}/_history/{applied.view.version}",
        },
    )


@router.post(
    "/fhir/Task",
    summary="Report a line item's status (a PSU-style Task: basedOn, focus, businessStatus, lastModified)",
    response_class=FhirResponse,
    responses=_TASK_RESPONSES,
    openapi_extra=fhir_body("StatusTask"),
)
async def create_task(request: Request, caller: StatusReporter, services: ServicesDep) -> Response:
    _, task = await read_fhir_json_body(request, services.settings.max_body_bytes)
    (applied,) = await _report(request, caller, services, [status_reports.TaskWrite(task, None, "Task")])
    return _answer(applied)


@router.put(
    "/fhir/Task/{id}",
    summary="Report a line item's status on its Task id",
    response_class=FhirResponse,
    responses=_TASK_RESPONSES,
    openapi_extra=fhir_body("StatusTask"),
)
async def update_task(id: str, request: Request, caller: StatusReporter, services: ServicesDep) -> Response:
    _, task = await read_fhir_json_body(request, services.settings.max_body_bytes)
    (applied,) = await _report(request, caller, services, [status_reports.TaskWrite(task, id, "Task")])
    return _answer(applied)


@router.post(
    "/fhir",
    summary="A transaction Bundle of up to 50 status Tasks, applied all together or not at all",
    response_class=FhirResponse,
    responses={
        200: {"description": "transaction-response Bundle", "content": fhir_content("FhirResource")},
        **outcome_responses(400, 401, 403, 404, 409, 413, 415),
    },
    openapi_extra=fhir_body("TaskTransactionBundle"),
)
async def transaction(request: Request, caller: StatusReporter, services: ServicesDep) -> Response:
    _, bundle = await read_fhir_json_body(request, services.settings.max_body_bytes)
    writes = _transaction_writes(bundle)
    applied = await _report(request, caller, services, writes)
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {
                    "resource": result.task,
                    "response": {
                        "status": "200 OK",
                        "location": f"Task/{result.view.item_id}/_history/{result.view.version}",
                        "etag": f'W/"{result.view.version}"',
                    },
                }
                for result in applied
            ],
        }
    )


def _transaction_writes(bundle: Any) -> list[status_reports.TaskWrite]:
    if (
        not isinstance(bundle, dict)
        or bundle.get("resourceType") != "Bundle"
        or bundle.get("type") != "transaction"
    ):
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.STRUCTURE,
                    ErrorCode.INVALID_VALUE,
                    "Send a Bundle of type 'transaction'",
                    "Bundle.type",
                )
            ],
        )
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.REQUIRED,
                    ErrorCode.MISSING_FIELD,
                    "The transaction has no entries",
                    "Bundle.entry",
                )
            ],
        )
    writes: list[status_reports.TaskWrite] = []
    issues: list[Issue] = []
    for index, raw in enumerate(entries):
        entry: dict[str, Any] = raw if isinstance(raw, dict) else {}
        request: dict[str, Any] = entry["request"] if isinstance(entry.get("request"), dict) else {}
        method, url = request.get("method"), request.get("url")
        where = f"Bundle.entry[{index}]"
        if method == "POST" and url == "Task":
            writes.append(status_reports.TaskWrite(entry.get("resource"), None, f"{where}.resource"))
        elif method == "PUT" and isinstance(url, str) and url.startswith("Task/") and url.count("/") == 1:
            writes.append(
                status_reports.TaskWrite(
                    entry.get("resource"), url.removeprefix("Task/"), f"{where}.resource"
                )
            )
        else:
            issues.append(
                Issue(
                    IssueType.NOT_SUPPORTED,
                    ErrorCode.INVALID_VALUE,
                    "Each entry is POST Task or PUT Task/{id}",
                    f"{where}.request",
                )
            )
    if issues:
        raise OperationOutcomeError(400, issues)
    return writes


@router.get(
    "/fhir/Task/{id}",
    summary="Read a line item's Task",
    response_class=FhirResponse,
    responses={200: _TASK_RESPONSES[200], **outcome_responses(401, 403, 404)},
)
async def read_task(id: str, request: Request, caller: TaskReader, services: ServicesDep) -> Response:
    task = await for_caller(
        services,
        request,
        caller,
        task_reads.read_task,
        item_id=id,
    )
    return FhirResponse(task)


@router.get(
    "/fhir/Task/{id}/_history",
    summary="The timeline of a line item: every event in order, with its source and verdict",
    response_class=FhirResponse,
    responses={
        200: {"description": "history Bundle", "content": fhir_content("FhirResource")},
        **outcome_responses(401, 403, 404),
    },
)
async def task_history(id: str, request: Request, caller: TaskReader, services: ServicesDep) -> Response:
    bundle = await for_caller(
        services,
        request,
        caller,
        task_reads.task_history,
        item_id=id,
        base_url=services.settings.base_url,
    )
    return FhirResponse(bundle)


_SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "searchset Bundle", "content": fhir_content("FhirResource")},
    **outcome_responses(400, 401, 403, 413, 415),
}


# Identifier search values are checked for shape first: a value spelt in another script's digits, or
# with a trailing newline, would otherwise find nothing and leave the caller guessing why.
_IDENTIFIER_PARAMETERS: dict[str, tuple[Callable[[str], bool], str]] = {
    "owner": (is_ods_code, "an ODS code: 3-12 of A-Z and 0-9"),
    "requester": (is_ods_code, "an ODS code: 3-12 of A-Z and 0-9"),
    "focus:identifier": (is_item_identifier, "a line item identifier: 1-64 ASCII letters, digits, '.', '-'"),
    "based-on:identifier": (is_short_form_id_shaped, "a short-form prescription ID (XXXXXX-XXXXXX-XXXXXC)"),
    "patient:identifier": (is_nhs_number_shaped, "an NHS number: 10 digits, 0-9"),
}


def _check_identifier_parameters(parameters: list[tuple[str, str]]) -> list[tuple[str, str]]:
    issues = [
        Issue(IssueType.VALUE, ErrorCode.INVALID_VALUE, f"{name} is {_IDENTIFIER_PARAMETERS[name][1]}", name)
        for name, value in parameters
        if name in _IDENTIFIER_PARAMETERS and not _IDENTIFIER_PARAMETERS[name][0](value.rpartition("|")[2])
    ]
    if issues:
        raise OperationOutcomeError(400, issues)
    return parameters


@router.get(
    "/fhir/Task",
    summary="Search Tasks: owner, requester, business-status, focus:identifier, based-on:identifier, "
    "_lastUpdated, _count, _sort (patient:identifier only with POST _search)",
    description="A provider registered with the `pull` adapter fetches its orders with "
    "`owner=<its ODS>&business-status=queued` (and `_count`): each prescription returned is leased to "
    "the caller for the provider's `lease_seconds` (its other pollers are not offered it meanwhile), "
    "and each Task names the message to read in `input` (`prescription-message`: `Bundle/{id}`). "
    "That search pages by leasing: search again for the next orders. Every other search only reads.",
    response_class=FhirResponse,
    responses=_SEARCH_RESPONSES,
    openapi_extra={"parameters": query_parameters(task_reads.TASK_SEARCH)},
)
async def search_tasks(request: Request, caller: TaskReader, services: ServicesDep) -> Response:
    parameters = _check_identifier_parameters(list(request.query_params.multi_items()))
    query = "&".join(f"{k}={v}" for k, v in parameters if k != "_page_token")
    base = f"{services.settings.base_url}/fhir/Task"
    bundle = await for_caller(
        services,
        request,
        caller,
        task_reads.search_tasks,
        parameters=parameters,
        patient_allowed=False,
        self_url=f"{base}?{query}" if query else base,
        next_url=f"{base}?{query}" if query else base,
    )
    return FhirResponse(bundle)


@router.post(
    "/fhir/Task/_search",
    summary="Search Tasks with the parameters in a form body (the way to search by NHS number)",
    response_class=FhirResponse,
    responses=_SEARCH_RESPONSES,
    openapi_extra={"requestBody": form_body(task_reads.TASK_SEARCH)},
)
async def search_tasks_by_post(request: Request, caller: TaskReader, services: ServicesDep) -> Response:
    parameters = _check_identifier_parameters(
        await _search_form(request) + list(request.query_params.multi_items())
    )
    base = f"{services.settings.base_url}/fhir/Task/_search"
    bundle = await for_caller(
        services,
        request,
        caller,
        task_reads.search_tasks,
        parameters=parameters,
        patient_allowed=True,
        # The parameters stay in the body: repeat the POST with the token from the next link.
        self_url=base,
        next_url=base,
    )
    return FhirResponse(bundle)


_MAX_SEARCH_FORM_BYTES = 16_384


async def _search_form(request: Request) -> list[tuple[str, str]]:
    """Search parameters from an `application/x-www-form-urlencoded` body (it may be empty)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_SEARCH_FORM_BYTES:
            raise OperationOutcomeError(
                413, [Issue(IssueType.TOO_LONG, ErrorCode.PAYLOAD_TOO_LARGE, "The search form is too large")]
            )
    if not body.strip():
        return []
    if media_type != "application/x-www-form-urlencoded":
        raise OperationOutcomeError(
            415,
            [
                Issue(
                    IssueType.NOT_SUPPORTED,
                    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                    "Send search parameters as application/x-www-form-urlencoded",
                )
            ],
        )
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OperationOutcomeError(
            400, [Issue(IssueType.STRUCTURE, ErrorCode.INVALID_VALUE, "The search form cannot be parsed")]
        ) from exc
