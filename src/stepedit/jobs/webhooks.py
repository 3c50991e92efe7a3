"""Signed webhook delivery, in the Standard-Webhooks form the wavespeed seed documents.

Headers: `webhook-id`, `webhook-timestamp` (unix seconds) and
`webhook-signature: v3,<hex HMAC-SHA256(secret, f"{id}.{timestamp}.{raw body}")>`.
A delivery is retried with exponential backoff, a bounded number of times; the id stays the
same across retries so a receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from stepedit.errors import InvalidInput
from stepedit.inputs import is_blocked_address

logger = logging.getLogger(__name__)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"v3,{digest}"


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side (used by tests and documented for clients)."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    return hmac.compare_digest(expected, headers["webhook-signature"])


def check_webhook_url(url: str) -> None:
    """Refuse a webhook URL that cannot work, at submission (the address is checked at delivery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise InvalidInput("webhook: an http(s) URL is required", param="webhook")


def is_public_destination(url: str) -> bool:
    """False when the URL's host resolves to a loopback/private/reserved address (SSRF guard)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return bool(addresses) and not any(is_blocked_address(a) for a in addresses)


class WebhookSender:
    def __init__(
        self,
        secret: str,
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        allow_private: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.secret = secret
        self.allow_private = allow_private
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._sleep = sleep

    def deliver(self, url: str, message_id: str, body: bytes) -> bool:
        """POST `body` to `url`; True once a 2xx answer came back, False after the last attempt."""
        if not self.allow_private and not is_public_destination(url):
            logger.warning("webhook %s: %s is not a public address; not sent", message_id, url)
            return False
        delay = self.backoff_s
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, self.max_attempts + 1):
                timestamp = int(time.time())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": message_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(self.secret, message_id, timestamp, body),
                }
                try:
                    response = client.post(url, content=body, headers=headers)
                    if 200 <= response.status_code < 300:
                        return True
                    logger.warning(
                        "webhook %s attempt %d: HTTP %d", message_id, attempt, response.status_code
                    )
                except httpx.HTTPError as exc:
                    logger.warning("webhook %s attempt %d: %s", message_id, attempt, exc)
                if attempt < self.max_attempts:
                    self._sleep(delay)
                    delay *= 2
        return False
