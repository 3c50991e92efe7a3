"""From exception to HTTP status, once for every API flavour.

`to_http_error` turns any exception into an `HTTPError`: the status by FastAPI's conventions
(422 for a field that fails validation, 415 for an image format we do not take, ...), a stable
code, the message and the field at fault. Each flavour then answers it in its own wire shape and
may answer a status its provider spells differently (the provider APIs say 400 for both of those
examples): see `ErrorShape` in `stepedit.api.flavours` and each flavour's `errors.py`.

Bad input is never a 500. Anything unexpected becomes a generic 500 whose message reveals
nothing (the traceback goes to the log).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepedit.errors import (
    InsufficientStorage,
    InvalidInput,
    JobCanceled,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    QuotaExceeded,
    ServiceUnavailable,
    StepEditError,
    Unauthorized,
    UnsupportedMediaType,
)

RETRY_AFTER_S = 5
GENERIC_500 = "The server had an internal error while processing the request."
VALIDATION_STATUS = 422  # FastAPI's status for a field that fails validation
AUTH_CHALLENGE = "Bearer"  # WWW-Authenticate on every 401: the API keys are Bearer tokens
# The parts of a request FastAPI names first in an error's location.
REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie", "form"})


class InvalidField(InvalidInput):
    """A field that fails validation (`EditRequest.validate`'s, or a body read by hand): the
    flavour's validation status, as for FastAPI's own RequestValidationError."""


class JobFailed(StepEditError):
    """A synchronous call's job ended failed or canceled for a reason that is not the input's."""

    code = "job_failed"


class SyncTimeout(StepEditError):
    """A synchronous call's job did not finish within the wait limit (it keeps running)."""

    code = "timeout"


@dataclass(frozen=True)
class HTTPError:
    """An exception as HTTP sees it, before a flavour dresses it in its body."""

    status: int
    code: str
    message: str
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def to_http_error(exc: BaseException) -> HTTPError:
    """Status, code, message, field and headers for `exc`."""
    if isinstance(exc, StepEditError):
        return HTTPError(
            status=status_for(exc),
            code=exc.code,
            message=exc.message,
            param=exc.param,
            headers=headers_for(exc),
        )
    if isinstance(exc, RequestValidationError):
        return from_validation_errors(exc.errors())
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


def status_for(exc: StepEditError) -> int:
    if isinstance(exc, InvalidField):
        return VALIDATION_STATUS
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, UnsupportedMediaType):
        return 415
    if isinstance(exc, InvalidInput):  # ImageFetchError included
        return 400
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, JobCanceled):
        return 409
    if isinstance(exc, QueueFull | QuotaExceeded):
        return 429
    if isinstance(exc, InsufficientStorage):
        return 507
    if isinstance(exc, ServiceUnavailable):
        return 503
    if isinstance(exc, SyncTimeout):
        return 504
    return 500


def headers_for(exc: StepEditError) -> dict[str, str]:
    """Retry-After where a retry may succeed; the auth scheme on a 401 (RFC 9110 11.6.1)."""
    if isinstance(exc, QueueFull | ServiceUnavailable):
        retry_after = getattr(exc, "retry_after_s", None) or RETRY_AFTER_S
        return {"Retry-After": str(int(retry_after))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": AUTH_CHALLENGE}
    return {}


def from_validation_errors(errors: Sequence[Any]) -> HTTPError:
    """FastAPI/pydantic validation errors -> one error naming the first field."""
    if not errors:
        return HTTPError(
            status=VALIDATION_STATUS,
            code=InvalidInput.code,
            message="Invalid request.",
            param="body",
        )
    first = errors[0]
    param = param_of(first)
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "Field required"
    text = f"{param}: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return HTTPError(status=VALIDATION_STATUS, code=InvalidInput.code, message=text, param=param)


def param_of(error: Mapping[str, Any]) -> str:
    """The field a FastAPI/pydantic error is about: its location without the part of the request
    (`("body", "seed")` -> "seed", `("header", "idempotency-key")` -> "idempotency-key"); the
    part itself ("body") for an error about the whole of it (a body that is not JSON)."""
    location = [str(part) for part in error.get("loc", ())]
    if location and location[0] in REQUEST_PARTS:
        part, location = location[0], location[1:]
    else:
        part = "body"
    if error.get("type") == "json_invalid":  # its location is a character offset
        return part
    return ".".join(location) or part
