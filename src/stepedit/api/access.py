"""Request ids and the access log.

Every request gets an id: the caller's `X-Request-Id` when it is short and plain (at most 128
of letters, digits and `-_.:`), otherwise one made here, so a hostile header can neither bloat
nor forge log lines. The id is echoed on every response, named in error bodies that carry it
(seed 003's `error.param`) and logged with the request, one line each:

    method=POST path=/v1/jobs status=202 duration_ms=12.3 request_id=req_... flavour=native

The line holds no query string (a webhook URL may carry a token) and no header (the API key);
a path that is itself a secret (an output file's unguessable name) is logged as its route.
uvicorn's own access log, which has both, is off (`stepedit.server`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}")
MAX_LOGGED_PATH_CHARS = 512


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def sanitised_request_id(given: str | None) -> str:
    """`given` if it is a safe id, else a new one."""
    if given is not None and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def request_id_of(request: Request) -> str:
    """The request's id (set by `AccessLog`; made up and remembered here where it did not run)."""
    existing = getattr(request.state, "request_id", None)
    if isinstance(existing, str):
        return existing
    request_id = sanitised_request_id(request.headers.get(REQUEST_ID_HEADER))
    request.state.request_id = request_id
    return request_id


class AccessLog:
    """ASGI middleware: the request id (see the module), on the response and in one access-log
    line per request. Install it outermost, so every answer is logged and carries the id."""

    def __init__(self, app: ASGIApp, redacted_routes: Iterable[str] = ()) -> None:
        self.app = app
        self.redacted_routes = frozenset(redacted_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(Request(scope))
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logger.info(
                "method=%s path=%s status=%d duration_ms=%.1f request_id=%s flavour=%s",
                scope.get("method", ""),
                self.logged_path(scope),
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
                flavour_of(scope),
            )

    def logged_path(self, scope: Scope) -> str:
        template = getattr(scope.get("route"), "path", None)
        if template in self.redacted_routes:
            return str(template)
        return printable(str(scope.get("path", "")), MAX_LOGGED_PATH_CHARS)


def flavour_of(scope: Scope) -> str:
    """The name of the flavour serving the path (`FlavourRegistry` in the app's state)."""
    app = scope.get("app")
    registry = getattr(getattr(app, "state", None), "flavours", None)
    if registry is None:
        return "-"
    return str(registry.for_path(str(scope.get("path", ""))).name)


def printable(text: str, limit: int) -> str:
    """`text` as one field of a log line: control characters escaped (a decoded %0A must not
    start a forged line), spaces as %20, at most `limit` characters."""
    escaped = "".join(
        "%20" if c == " " else c if c.isprintable() else c.encode("unicode_escape").decode()
        for c in text
    )
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."
