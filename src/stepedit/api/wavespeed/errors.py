"""WaveSpeedAI's error body, `{"code": <HTTP status>, "message": "..."}` (seeds 000/001), and
its statuses: 400 for every bad input, including a wrong image format and a failed validation."""

from __future__ import annotations

from typing import Any

from stepedit.api.errors import HTTPError
from stepedit.api.flavours import ErrorShape


def render_error(error: HTTPError, request_id: str) -> dict[str, Any]:
    return {"code": error.status, "message": error.message}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
}

ERRORS = ErrorShape(render_error, ERROR_SCHEMA, statuses={415: 400, 422: 400})
