"""The HTTP server: uvicorn, hardened against slow and hostile clients, with graceful shutdown.

uvicorn bounds neither header size (with httptools) nor the time a client may take to send its
headers or body, and its `limit_concurrency` answers 503 to everything, /health included, once
half-open connections fill it. `GuardedHttpToolsProtocol` adds, per connection:

- a header size limit (`http_max_header_bytes`): the request line and headers beyond it are
  answered 431 and the connection closed, so memory stays bounded;
- a header timeout (`http_header_timeout_s`, from the connection or the previous response):
  408 and closed;
- a body timeout (`http_body_timeout_s`, from the end of the headers): 408 and closed; the
  route sees the client as disconnected;
- a connection limit (`http_max_connections`): a new connection past it first evicts the
  oldest connection that has no request in progress (half-open, or idle keep-alive); if every
  connection is busy, its requests are answered 503 with Retry-After, except `/health` and
  `/metrics`, which are always served, so orchestrators can tell "busy" from "dead".

`StepEditServer` is uvicorn's server with a hook at SIGTERM: before uvicorn stops accepting
and drains requests (for at most `http_drain_s`), `on_shutdown` runs: the job service stops
accepting work and ends synchronous waits and event streams at once (503, the job kept), and
the worker stops taking jobs (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from stepedit.settings import Settings

logger = logging.getLogger(__name__)

ALWAYS_SERVED = frozenset({"/health", "/metrics"})
OVERLOADED_RETRY_S = 5


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    max_connections: int = 512

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            max_connections=settings.http_max_connections,
        )


def _status_response(status: int, reason: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    ).encode() + body


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "param": None}}).encode()


async def overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI answer to a request past the connection limit (native error shape)."""
    body = _error_body("overloaded", "the server has too many open connections; retry shortly")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(OVERLOADED_RETRY_S).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase = "idle"  # idle -> headers -> body -> app -> idle (keep-alive)
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at = self.loop.time()

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._make_room()
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle" and self._timer is None:
            self._arm(self.limits.header_timeout_s, self._on_header_timeout)
        super().data_received(data)
        if self._phase in ("idle", "headers") and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                logger.warning(
                    "request headers over %d bytes; refused", self.limits.max_header_bytes
                )
                self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                             "the request line and headers are too large")  # fmt: skip

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"

    def on_headers_complete(self) -> None:
        self._phase = "body"
        self._arm(self.limits.body_timeout_s, self._on_body_timeout)
        saved = self.app
        if self._is_over_limit() and self._path() not in ALWAYS_SERVED:
            logger.warning("connection limit reached: answering 503")
            self.app = overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = saved

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = "app"
        self._disarm()

    def on_response_complete(self) -> None:
        self._phase = "idle"
        self._header_bytes = 0
        super().on_response_complete()

    # ------------------------------------------------------------ limits

    def _path(self) -> str:
        try:
            return str(httptools.parse_url(self.url).path.decode("ascii", "replace"))
        except httptools.HttpParserInvalidURLError:
            return ""

    def _is_over_limit(self) -> bool:
        return len(self.connections) > self.limits.max_connections

    @property
    def is_waiting_for_request(self) -> bool:
        """No request in progress: half-open, still sending headers, or idle keep-alive."""
        return self._phase in ("idle", "headers")

    def _make_room(self) -> None:
        if len(self.connections) < self.limits.max_connections:
            return
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedHttpToolsProtocol) and c.is_waiting_for_request
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._opened_at)
            logger.warning("connection limit reached: closing the oldest idle connection")
            oldest._close()

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_header_timeout(self) -> None:
        self._timer = None
        if self._phase == "idle" and self._header_bytes == 0:
            self._close()  # nothing sent at all: nothing to answer
        elif self._phase in ("idle", "headers"):
            self._refuse(408, "Request Timeout", "request_timeout",
                         "the request headers did not arrive in time")  # fmt: skip

    def _on_body_timeout(self) -> None:
        self._timer = None
        if self._phase != "body":
            return
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.disconnected = True  # the route sees a client that went away
            self.cycle.message_event.set()
            self._refuse(408, "Request Timeout", "request_timeout",
                         "the request body did not arrive in time")  # fmt: skip
        else:
            self._close()

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_status_response(status, reason, _error_body(code, message)))
        self._close()

    def _close(self) -> None:
        self._disarm()
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with `limits`."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class StepEditServer(uvicorn.Server):
    """uvicorn's server with two sets of hooks: `on_shutdown` (quick) as soon as SIGTERM starts
    a shutdown, `after_drain` (blocking, run in a thread) once requests are drained. Both run
    before `run` returns: after a signal, uvicorn re-raises it as it exits."""

    def __init__(
        self,
        config: Config,
        on_shutdown: Sequence[Callable[[], None]] = (),
        after_drain: Sequence[Callable[[], None]] = (),
    ) -> None:
        super().__init__(config)
        self.on_shutdown = list(on_shutdown)
        self.after_drain = list(after_drain)

    async def shutdown(self, sockets: Any = None) -> None:
        for hook in self.on_shutdown:
            _run_hook(hook)
        await super().shutdown(sockets)
        for hook in self.after_drain:
            await asyncio.to_thread(_run_hook, hook)


def _run_hook(hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception:
        logger.exception("shutdown hook failed")


def server_config(app: Any, settings: Settings) -> Config:
    return Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # stepedit.api.access logs each request, without query or key
        http=guarded_protocol(HttpLimits.from_settings(settings)),
        timeout_keep_alive=max(1, round(settings.http_keep_alive_s)),
        timeout_graceful_shutdown=max(1, round(settings.http_drain_s)),
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
    )


def serve(
    app: Any,
    settings: Settings,
    *,
    on_shutdown: Sequence[Callable[[], None]] = (),
    after_drain: Sequence[Callable[[], None]] = (),
) -> None:
    """Serve until SIGTERM/SIGINT; the hooks run as `StepEditServer` says."""
    StepEditServer(server_config(app, settings), on_shutdown, after_drain).run()
