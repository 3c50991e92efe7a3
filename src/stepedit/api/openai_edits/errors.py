"""OpenAI's error body, which seed 002 keeps: `{"error": {"message", "type", "param", "code"}}`,
`param` naming the field at fault. Every bad input is a 400, a wrong image format included."""

from __future__ import annotations

from typing import Any

from stepedit.api.errors import HTTPError
from stepedit.api.flavours import NULLABLE_STRING, ErrorShape, error_object_schema
from stepedit.errors import QuotaExceeded

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def openai_error(error: HTTPError, param: str | None) -> dict[str, Any]:
    """The OpenAI error object, with `param` as the flavour fills it."""
    error_type = _TYPES.get(error.status, "server_error")
    if error.code == QuotaExceeded.code:
        error_type = "insufficient_quota"
    return {
        "error": {"message": error.message, "type": error_type, "param": param, "code": error.code}
    }


def render_error(error: HTTPError, request_id: str) -> dict[str, Any]:
    return openai_error(error, error.param)


ERROR_SCHEMA = error_object_schema(
    {
        "message": {"type": "string"},
        "type": {"type": "string"},
        "param": NULLABLE_STRING,
        "code": NULLABLE_STRING,
    }
)
OPENAI_STATUSES = {415: 400, 422: 400}

ERRORS = ErrorShape(render_error, ERROR_SCHEMA, statuses=OPENAI_STATUSES)
