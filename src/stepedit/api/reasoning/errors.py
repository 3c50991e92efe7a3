"""Seed 004 publishes no error body: the reasoning endpoint answers in stepedit's native one
(`{"error": {"code", "message", "param"}}`), with the statuses of a provider API: 400 for a
field that fails validation, 415 for an image format it does not take."""

from __future__ import annotations

from stepedit.api.flavours import ErrorShape
from stepedit.api.native.errors import ERROR_SCHEMA, render_error

ERRORS = ErrorShape(render_error, ERROR_SCHEMA, statuses={422: 400})
