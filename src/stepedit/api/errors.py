"""The one place that turns exceptions into HTTP responses, in each API flavour's error shape.

    wavespeed (seeds 000/001)      {"code": <HTTP status>, "message": "..."}
    openai_edits (seed 002)        {"error": {"message", "type", "param", "code"}}
    generations (seed 003)         the same, with param = the request id (as the seed documents)
    reasoning (seed 004), native   {"error": {"code", "message", "param"}}

The flavour is chosen from the request path, so errors raised before a route runs (request
validation, unknown paths, authentication) are shaped like the routes around them.
Bad input is never a 500: FastAPI's RequestValidationError becomes a 400 (422 on the native API,
FastAPI's own convention) naming the field. Anything unexpected is logged with its traceback and
answered with a generic 500.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepedit.errors import (
    ImageFetchError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    QuotaExceeded,
    ServiceUnavailable,
    StepEditError,
    Unauthorized,
    UnsupportedMediaType,
)
from stepedit.jobs.state import JobStatus
from stepedit.jobs.views import JobView

logger = logging.getLogger(__name__)

Flavour = Literal["wavespeed", "openai_edits", "generations", "reasoning", "native"]
FLAVOURS: tuple[Flavour, ...] = ("wavespeed", "openai_edits", "generations", "reasoning", "native")

REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_S = 5
_PATH_PREFIXES: tuple[tuple[str, Flavour], ...] = (
    ("/api/v3/", "wavespeed"),
    ("/v1/images/edits", "openai_edits"),
    ("/v1/images/generations", "generations"),
    ("/v1/image/", "reasoning"),
)
# The OpenAI-style providers answer 400 for an image in the wrong format.
_OPENAI_STYLE: frozenset[Flavour] = frozenset({"openai_edits", "generations"})
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
GENERIC_500 = "The server had an internal error while processing the request."


class JobFailed(StepEditError):
    """A synchronous call's job ended failed or canceled for a reason that is not the input's."""

    code = "job_failed"


class SyncTimeout(StepEditError):
    """A synchronous call's job did not finish within the wait limit (it keeps running)."""

    code = "timeout"


_INPUT_ERRORS: dict[str, type[InvalidInput]] = {
    cls.code: cls for cls in (InvalidInput, UnsupportedMediaType, PayloadTooLarge, ImageFetchError)
}


def check_job_succeeded(view: JobView, waited_s: float) -> None:
    """For synchronous flavours: raise unless `view` (after waiting `waited_s`) succeeded."""
    if view.status is JobStatus.SUCCEEDED:
        return
    if not view.is_terminal:
        raise SyncTimeout(f"The edit did not finish within {waited_s:g} s (job {view.id}).")
    raise job_failure(
        view.error.code if view.error else None,
        view.error.message if view.error else None,
        canceled=view.status is JobStatus.CANCELED,
    )


def job_failure(code: str | None, message: str | None, *, canceled: bool = False) -> StepEditError:
    """The exception a synchronous flavour raises for a job that did not succeed: the input's
    fault when the worker said so (400), otherwise a failure of the service (500)."""
    if canceled:
        return JobFailed("The job was canceled before it finished.")
    error_class = _INPUT_ERRORS.get(code or "")
    if error_class is not None:
        return error_class(message or "Invalid input.")
    error = JobFailed(message or "The edit failed.")
    if code:
        error.code = code
    return error


@dataclass(frozen=True)
class HTTPError:
    """An exception as HTTP sees it, before it is dressed in a flavour's body."""

    status: int
    code: str
    message: str
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def flavour_for_path(path: str) -> Flavour:
    for prefix, flavour in _PATH_PREFIXES:
        if path.startswith(prefix):
            return flavour
    return "native"


def to_http_error(exc: BaseException, flavour: Flavour) -> HTTPError:
    """Status, code, message and headers for `exc` as `flavour` reports it."""
    if isinstance(exc, StepEditError):
        return HTTPError(
            status=status_for(exc, flavour),
            code=exc.code,
            message=exc.message,
            param=exc.param,
            headers=_retry_headers(exc),
        )
    if isinstance(exc, RequestValidationError):
        return from_validation_errors(exc.errors(), flavour)
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return HTTPError(
            status=exc.status_code,
            code=code,
            message=str(exc.detail),
            headers=dict(exc.headers or {}),
        )
    return HTTPError(status=500, code="internal_error", message=GENERIC_500)


def status_for(exc: StepEditError, flavour: Flavour) -> int:
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, UnsupportedMediaType):
        return 415 if flavour in ("reasoning", "native") else 400
    if isinstance(exc, ImageFetchError | InvalidInput):
        return 400
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, QueueFull | QuotaExceeded):
        return 429
    if isinstance(exc, ServiceUnavailable):
        return 503
    if isinstance(exc, SyncTimeout):
        return 504
    return 500


def _retry_headers(exc: StepEditError) -> dict[str, str]:
    if isinstance(exc, QueueFull | ServiceUnavailable):
        retry_after = getattr(exc, "retry_after_s", None) or RETRY_AFTER_S
        return {"Retry-After": str(int(retry_after))}
    return {}


def from_validation_errors(errors: Sequence[Any], flavour: Flavour) -> HTTPError:
    """FastAPI/pydantic validation errors -> one InvalidInput-like error naming the first field."""
    if not errors:
        return HTTPError(status=400, code=InvalidInput.code, message="Invalid request.")
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "form")]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "Field required"
    text = f"{param}: {message}" if param else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    status = 422 if flavour == "native" else 400
    return HTTPError(status=status, code=InvalidInput.code, message=text, param=param)


def error_body(
    error: HTTPError, flavour: Flavour, *, request_id: str | None = None
) -> dict[str, Any]:
    """`error` in `flavour`'s wire shape."""
    if flavour == "wavespeed":
        return {"code": error.status, "message": error.message}
    if flavour in _OPENAI_STYLE:
        # Seed 003 documents error.param as the request id; seed 002 keeps OpenAI's meaning.
        param = request_id if flavour == "generations" else error.param
        error_type = _OPENAI_TYPES.get(error.status, "server_error")
        if error.code == QuotaExceeded.code:
            error_type = "insufficient_quota"
        return {
            "error": {
                "message": error.message,
                "type": error_type,
                "param": param,
                "code": error.code,
            }
        }
    return {"error": {"code": error.code, "message": error.message, "param": error.param}}


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id, or one made up (and remembered) for this request."""
    existing = getattr(request.state, "request_id", None)
    if isinstance(existing, str):
        return existing
    request_id = request.headers.get(REQUEST_ID_HEADER) or f"req_{uuid.uuid4().hex}"
    request.state.request_id = request_id[:128]
    return request_id[:128]


def error_response(exc: BaseException, request: Request) -> JSONResponse:
    flavour = flavour_for_path(request.url.path)
    error = to_http_error(exc, flavour)
    if error.status >= 500 and not isinstance(exc, StepEditError | StarletteHTTPException):
        logger.error(
            "unexpected error on %s %s",
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    elif error.status >= 500:
        logger.warning("%s on %s: %s", error.code, request.url.path, error.message)
    request_id = request_id_of(request)
    headers = {**error.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(
        error_body(error, flavour, request_id=request_id), status_code=error.status, headers=headers
    )


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on `app` (create_app calls this once)."""
    app.add_exception_handler(StepEditError, _handle)
    app.add_exception_handler(RequestValidationError, _handle)
    app.add_exception_handler(StarletteHTTPException, _handle)
    app.add_exception_handler(Exception, _handle)
    install_openapi_error_statuses(app)


def install_openapi_error_statuses(app: FastAPI) -> None:
    """Make the OpenAPI document say what validation errors really answer: FastAPI documents
    its own 422 with a `{"detail": [...]}` body on every route with parameters, but the
    provider flavours answer 400 and the native API 422, each in its own error shape."""
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = correct_validation_statuses(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct_validation_statuses(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with each operation's automatic 422 replaced by the status and body its
    flavour really answers a validation error with."""
    for path, operations in document.get("paths", {}).items():
        flavour = flavour_for_path(path)
        for operation in operations.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if not isinstance(responses, dict) or "422" not in responses:
                continue
            del responses["422"]
            status = "422" if flavour == "native" else "400"
            responses.setdefault(status, error_responses(flavour, int(status))[int(status)])
    schemas = document.get("components", {}).get("schemas", {})
    if "#/components/schemas/HTTPValidationError" not in json.dumps(document.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def error_responses(flavour: Flavour, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting a flavour's error statuses on a route."""
    example = error_body(
        HTTPError(status=400, code="invalid_request", message="...", param="image"),
        flavour,
        request_id="req_...",
    )
    schema = _ERROR_SCHEMAS["openai" if flavour in _OPENAI_STYLE else flavour]
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": schema, "example": example}},
        }
        for status in statuses
    }


_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "wavespeed": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
    },
    "openai": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
            }
        },
    },
}
_ERROR_SCHEMAS["reasoning"] = _ERROR_SCHEMAS["native"] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "param"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "param": _NULLABLE_STRING,
            },
        }
    },
}


_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or invalid API key",
    404: "Not found",
    413: "Image too large",
    422: "Invalid request (the native API's validation errors)",
    415: "Unsupported image format",
    429: "Queue full or quota exceeded (see Retry-After)",
    503: "Service unavailable (see Retry-After)",
}
