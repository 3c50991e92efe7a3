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
from stepedit.inputs import is_blocked_address, pin_to_address

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


def destination_address(
    url: str, *, allow_private: bool
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to connect to for `url`: None when it does not resolve or (unless
    `allow_private`) when any of its addresses is loopback/private/reserved."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or (not allow_private and any(is_blocked_address(a) for a in addresses)):
        return None
    return addresses[0]


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
        address = destination_address(url, allow_private=self.allow_private)
        if address is None:
            logger.warning(
                "webhook %s: %s does not resolve to a public address; not sent", message_id, url
            )
            return False
        # Connect to the checked address itself (Host header and TLS name unchanged), so the
        # name cannot be re-resolved to a blocked address between the check and the send.
        pinned_url, host_header, extensions = pin_to_address(urlsplit(url), address)
        delay = self.backoff_s
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, self.max_attempts + 1):
                timestamp = int(time.time())
                headers = {
                    "host": host_header,
                    "content-type": "application/json",
                    "webhook-id": message_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(self.secret, message_id, timestamp, body),
                }
                try:
                    response = client.post(
                        pinned_url, content=body, headers=headers, extensions=extensions
                    )
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
