"""Seed 003's error body: OpenAI's (see `openai_edits.errors`), except that `error.param` is
the request id, as the seed documents. The field at fault is named in the message."""

from __future__ import annotations

from typing import Any

from stepedit.api.errors import HTTPError
from stepedit.api.flavours import ErrorShape
from stepedit.api.openai_edits.errors import ERROR_SCHEMA, OPENAI_STATUSES, openai_error


def render_error(error: HTTPError, request_id: str) -> dict[str, Any]:
    return openai_error(error, request_id)


ERRORS = ErrorShape(render_error, ERROR_SCHEMA, statuses=OPENAI_STATUSES)
