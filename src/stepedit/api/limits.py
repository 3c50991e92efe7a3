"""A request-body size limit applied before any route reads the body.

JSON flavours carry images as base64 (4/3 of the bytes) and FastAPI reads a JSON body whole
before a route sees it, so the per-image checks in `stepedit.inputs` come too late to protect
memory. This ASGI middleware refuses oversized bodies up front, in the flavour's error shape.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepedit.api.errors import error_response
from stepedit.errors import PayloadTooLarge

# Room for the other fields, multipart boundaries and data-URI prefixes around one image.
ENVELOPE_BYTES = 256 * 1024


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
            response = error_response(self._too_large(), Request(scope))
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body is larger than {self.max_body_bytes} bytes", param="image"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
