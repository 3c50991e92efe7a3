"""A webhook receiver on loopback that checks deliveries the way WaveSpeedAI's documentation
tells its clients to (https://wavespeed.ai/docs/verify-webhooks), written from the docs and not
from the server's code:

- headers `webhook-id`, `webhook-timestamp`, `webhook-signature: v3,<hex>`;
- the HMAC-SHA256 key is the secret without its `whsec_` prefix, as text (not base64-decoded);
- the signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`;
- a timestamp more than 300 s away is refused.

The header may hold several space-separated `v3,<hex>` entries (during a secret rotation); a
delivery verifies when one of them matches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def wavespeed_verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """WaveSpeedAI's documented check."""
    key = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        webhook_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
    except KeyError:
        return False
    if abs(time.time() - int(timestamp)) > 300:
        return False
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
    for entry in signatures.split():
        version, _, digest = entry.partition(",")
        if version == "v3" and hmac.compare_digest(digest, expected):
            return True
    return False


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def job_id(self) -> str:
        return self.headers["webhook-id"]

    def verifies_with(self, secret: str) -> bool:
        return wavespeed_verifies(secret, self.headers, self.body)


class Receiver:
    """Records every POST. `statuses`: the answers to give in turn (then 200). `hold`: while
    set... cleared, handlers block until it is set (a hanging receiver)."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.deliveries: list[Delivery] = []
        self.statuses = list(statuses)
        self.hold = threading.Event()
        self.hold.set()
        self.active = 0
        self.most_active = 0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.arrived:
                    receiver.active += 1
                    receiver.most_active = max(receiver.most_active, receiver.active)
                    receiver.deliveries.append(Delivery(headers, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.arrived.notify_all()
                receiver.hold.wait(120)  # a guard: a held handler is released by the test
                with receiver.arrived:
                    receiver.active -= 1
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up on us

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(
        self,
        count: int,
        timeout_s: float = 30.0,
        where: Callable[[Delivery], bool] = lambda _: True,
    ) -> list[Delivery]:
        """Block until `count` matching deliveries arrived (a guard timeout, not a measure)."""
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while len(found := [d for d in self.deliveries if where(d)]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(found)} of {count} deliveries arrived")
                self.arrived.wait(left)
        return found

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)
