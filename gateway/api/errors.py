"""Every error leaves the gateway as one FHIR OperationOutcome, rendered here and nowhere else."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from auth.tokens import OAuthError
from fhir_profiles.outcome import ErrorCode, Issue, IssueType, OperationOutcomeError, operation_outcome
from gateway.api.responses import FhirResponse
from gateway.logs import get_logger

log = get_logger("gateway.errors")

_HTTP_ISSUES: dict[int, tuple[IssueType, ErrorCode, str]] = {
    404: (IssueType.NOT_FOUND, ErrorCode.NO_RECORD_FOUND, "No such resource or endpoint"),
    405: (IssueType.NOT_SUPPORTED, ErrorCode.NOT_ALLOWED, "This method is not supported on this endpoint"),
}


def outcome_response(error: OperationOutcomeError) -> Response:
    return FhirResponse(operation_outcome(error.issues), status_code=error.status_code, headers=error.headers)


async def _operation_outcome_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperationOutcomeError)
    return outcome_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code, detail, text = _HTTP_ISSUES.get(
        exc.status_code, (IssueType.PROCESSING, ErrorCode.INVALID_VALUE, "The request could not be processed")
    )
    return outcome_response(
        OperationOutcomeError(exc.status_code, [Issue(code, detail, text)], headers=dict(exc.headers or {}))
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        Issue(
            IssueType.INVALID,
            ErrorCode.INVALID_VALUE,
            f"Invalid request {'.'.join(str(part) for part in error.get('loc', ()))}: "
            f"{error.get('msg', 'invalid')}",
        )
        for error in exc.errors()
    ]
    return outcome_response(OperationOutcomeError(400, issues))


async def _oauth_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuthError)
    # The token endpoint answers as OAuth clients expect (RFC 6749 section 5.2), not in FHIR.
    return JSONResponse(exc.body(), status_code=exc.status_code, headers={"Cache-Control": "no-store"})


async def _client_disconnect(_: Request, exc: Exception) -> Response:
    # The client hung up before its body arrived: nothing was read, so nothing was stored, and no
    # one is left to read an answer. Not a failure of the gateway.
    log.info("client_disconnected")
    return outcome_response(
        OperationOutcomeError(
            400,
            [
                Issue(
                    IssueType.INCOMPLETE,
                    ErrorCode.INVALID_VALUE,
                    "The connection closed before the whole request arrived; nothing was stored",
                )
            ],
        )
    )


def unexpected_error_response(exc: BaseException) -> Response:
    """A 500 that says nothing of the failure but its request id; the log gets type and place only."""
    # Never the exception's message: it may carry patient data.
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = (
        f"{frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}" if frame else "unknown"
    )
    log.error("unhandled_error", error_type=type(exc).__name__, where=where)
    return outcome_response(
        OperationOutcomeError(
            500,
            [
                Issue(
                    IssueType.EXCEPTION,
                    ErrorCode.SERVER_ERROR,
                    "The gateway could not process this request and stored nothing from it; "
                    "quote the X-Request-ID",
                )
            ],
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OperationOutcomeError, _operation_outcome_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OAuthError, _oauth_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
