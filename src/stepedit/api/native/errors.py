"""The native error body, `{"error": {"code", "message", "param"}}`, with FastAPI's statuses:
422 for a field that fails validation, 415 for an image format we do not take."""

from __future__ import annotations

from typing import Any

from stepedit.api.errors import HTTPError
from stepedit.api.flavours import NULLABLE_STRING, ErrorShape, error_object_schema


def render_error(error: HTTPError, request_id: str) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "param": error.param}}


ERROR_SCHEMA = error_object_schema(
    {"code": {"type": "string"}, "message": {"type": "string"}, "param": NULLABLE_STRING}
)

ERRORS = ErrorShape(render_error, ERROR_SCHEMA)
