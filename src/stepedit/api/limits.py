"""A request-body size limit applied before any route reads the body.

JSON flavours carry images as base64 (4/3 of the bytes) and FastAPI reads a JSON body whole
before a route sees it, so the per-image checks in `stepedit.inputs` come too late to protect
memory. This ASGI middleware refuses oversized bodies up front, in the flavour's error shape:
at once when Content-Length says so, and otherwise (a chunked body) as soon as the bytes read
pass the limit. Then it answers 413 itself: the route reading the body sees the client gone
and whatever it answers is dropped, so the refusal is never a parse error (400) nor a 500,
whoever reads the body (FastAPI or a route reading a form by hand).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepedit.api.flavours import error_response
from stepedit.errors import PayloadTooLarge

logger = logging.getLogger(__name__)

# Room for the other fields, multipart boundaries and data-URI prefixes around one image.
ENVELOPE_BYTES = 256 * 1024
_DISCONNECT: Message = {"type": "http.disconnect"}


def body_limit_for(max_upload_bytes: int) -> int:
    """Largest accepted request body for images of at most `max_upload_bytes`."""
    return max_upload_bytes * 4 // 3 + ENVELOPE_BYTES


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self.refuse(scope, send)
            return
        received = 0
        app_responded = False  # the route started its answer before the limit was passed
        refused = False  # the limit was passed: the route reads no more
        answered = False  # and the answer is this 413

        async def limited_receive() -> Message:
            nonlocal received, refused, answered
            if refused:
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    if not app_responded:
                        answered = True
                        await self.refuse(scope, send)
                    return _DISCONNECT  # the route stops reading: the client is gone for it
            return message

        async def app_send(message: Message) -> None:
            nonlocal app_responded
            if answered:
                return
            if message["type"] == "http.response.start":
                app_responded = True
            await send(message)

        try:
            await self.app(scope, limited_receive, app_send)
        except Exception:
            if not answered:
                raise
            # what the route made of the missing rest of the body; the 413 was the answer
            logger.debug("after a refused body on %s", scope.get("path"), exc_info=True)

    async def refuse(self, scope: Scope, send: Send) -> None:
        error = PayloadTooLarge(
            f"The request body is larger than the limit of {self.max_body_bytes} bytes.",
            param="image",
        )
        response = error_response(error, Request(scope))
        # The rest of the body is not read: the connection cannot carry another request.
        response.headers["connection"] = "close"
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return _DISCONNECT


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
