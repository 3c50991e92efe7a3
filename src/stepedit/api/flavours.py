"""The API flavours as records, the registry that finds one by path, and the error handlers
that answer in the flavour's shape.

Each flavour folder (`wavespeed/`, `openai_edits/`, ...) exports a `FLAVOUR` record: its name,
its router (whose prefix is the flavour's path prefix), its `ErrorShape` and, where it sends
webhooks, their body. `create_app` registers them; errors raised anywhere under a prefix (request
validation, unknown paths, authentication, the body-size limit) are answered in that flavour's
shape, and paths outside every prefix (/health, /files) in the fallback's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepedit.api.access import REQUEST_ID_HEADER, request_id_of
from stepedit.api.errors import VALIDATION_STATUS, HTTPError, to_http_error
from stepedit.errors import StepEditError
from stepedit.jobs.outbox import WebhookRenderer

logger = logging.getLogger(__name__)

ErrorRenderer = Callable[[HTTPError, str], dict[str, Any]]  # (error, request id) -> body

_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or invalid API key",
    404: "Not found",
    409: "The job was canceled before it finished",
    413: "Image too large",
    415: "Unsupported image format",
    422: "Invalid request (a field failed validation)",
    429: "Queue full or quota exceeded (see Retry-After)",
    503: "Service unavailable (see Retry-After)",
    507: "The server's storage is full (see Retry-After)",
}

# status -> the code and param of its example body
_EXAMPLES: dict[int, tuple[str, str | None]] = {
    401: ("unauthorized", None),
    404: ("not_found", None),
    409: ("canceled", None),
    413: ("payload_too_large", "image"),
    415: ("unsupported_media_type", "image"),
    429: ("queue_full", None),
    503: ("service_unavailable", None),
    507: ("insufficient_storage", None),
}

NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}


def error_object_schema(fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a body `{"error": {<fields>}}`, every field required, in this order."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": list(fields), "properties": fields}},
    }


@dataclass(frozen=True)
class ErrorShape:
    """How one flavour answers an error: its body, the body's OpenAPI schema, and the statuses
    its provider answers where FastAPI's convention differs (e.g. {422: 400})."""

    render: ErrorRenderer
    schema: dict[str, Any]
    statuses: Mapping[int, int] = field(default_factory=dict)

    def status(self, status: int) -> int:
        return self.statuses.get(status, status)

    def body(self, error: HTTPError, request_id: str) -> dict[str, Any]:
        return self.render(replace(error, status=self.status(error.status)), request_id)

    def responses(self, *statuses: int) -> dict[int | str, dict[str, Any]]:
        """OpenAPI `responses=` entries documenting these error statuses on a route."""
        return {
            status: {
                "description": _DESCRIPTIONS.get(status, "Error"),
                "content": {
                    "application/json": {"schema": self.schema, "example": self.example(status)}
                },
            }
            for status in statuses
        }

    def example(self, status: int) -> dict[str, Any]:
        code, param = _EXAMPLES.get(status, ("invalid_request", "image"))
        error = HTTPError(status=status, code=code, message=_DESCRIPTIONS.get(status, "..."))
        return self.body(replace(error, param=param), "req_...")


@dataclass(frozen=True)
class Flavour:
    """One API flavour, as its folder exports it (`FLAVOUR` in its `__init__.py`)."""

    name: str
    router: APIRouter
    errors: ErrorShape
    # base_url -> the body of this flavour's webhooks (default: the native JobView)
    webhook_renderer: Callable[[str], WebhookRenderer] | None = None

    @property
    def prefix(self) -> str:
        """The path prefix the flavour serves: its router's."""
        return self.router.prefix

    def serves(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")


class FlavourRegistry:
    """The flavours an app serves, found by path prefix (the longest that matches); paths
    outside every prefix belong to `fallback`."""

    def __init__(self, flavours: Iterable[Flavour], *, fallback: Flavour) -> None:
        self.fallback = fallback
        self._flavours: dict[str, Flavour] = {}
        for flavour in (*flavours, fallback):
            self.register(flavour)

    def register(self, flavour: Flavour) -> None:
        if flavour.name in self._flavours and self._flavours[flavour.name] is not flavour:
            raise ValueError(f"two flavours are named {flavour.name!r}")
        taken = {f.prefix: f.name for f in self if f.name != flavour.name}
        if flavour.prefix in taken:
            raise ValueError(f"{flavour.name} and {taken[flavour.prefix]} share {flavour.prefix}")
        self._flavours[flavour.name] = flavour

    def __iter__(self) -> Iterator[Flavour]:
        return iter(self._flavours.values())

    def __getitem__(self, name: str) -> Flavour:
        return self._flavours[name]

    def for_path(self, path: str) -> Flavour:
        serving = [f for f in self if f.serves(path)]
        return max(serving, key=lambda f: len(f.prefix), default=self.fallback)


def registry_of(app: Any) -> FlavourRegistry:
    registry: FlavourRegistry = app.state.flavours
    return registry


# ---------------------------------------------------------------------------- error handlers


def error_response(exc: BaseException, request: Request) -> JSONResponse:
    """`exc` answered in the shape of the flavour serving `request`'s path."""
    shape = registry_of(request.app).for_path(request.url.path).errors
    error = to_http_error(exc)
    status = shape.status(error.status)
    if status >= 500 and not isinstance(exc, StepEditError | StarletteHTTPException):
        logger.error(
            "unexpected error on %s %s",
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    elif status >= 500:
        logger.warning("%s on %s: %s", error.code, request.url.path, error.message)
    request_id = request_id_of(request)
    headers = {**error.headers, REQUEST_ID_HEADER: request_id}
    return JSONResponse(shape.body(error, request_id), status_code=status, headers=headers)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc, request)


def install_error_handlers(app: FastAPI, registry: FlavourRegistry) -> None:
    """Answer every error in its flavour's shape, and say so in the OpenAPI document."""
    app.state.flavours = registry
    app.add_exception_handler(StepEditError, _handle)
    app.add_exception_handler(RequestValidationError, _handle)
    app.add_exception_handler(StarletteHTTPException, _handle)
    app.add_exception_handler(Exception, _handle)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = correct_validation_statuses(build_openapi(), registry)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct_validation_statuses(
    document: dict[str, Any], registry: FlavourRegistry
) -> dict[str, Any]:
    """`document` with each operation's automatic 422 (FastAPI's `{"detail": [...]}` body)
    replaced by the status and body its flavour really answers a validation error with."""
    for path, operations in document.get("paths", {}).items():
        shape = registry.for_path(path).errors
        status = shape.status(VALIDATION_STATUS)
        for operation in operations.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if not isinstance(responses, dict) or str(VALIDATION_STATUS) not in responses:
                continue
            del responses[str(VALIDATION_STATUS)]
            responses.setdefault(str(status), shape.responses(status)[status])
    schemas = document.get("components", {}).get("schemas", {})
    if "#/components/schemas/HTTPValidationError" not in json.dumps(document.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document
