"""Signed webhook delivery, in the Standard-Webhooks form the wavespeed seed documents.

Headers: `webhook-id`, `webhook-timestamp` (unix seconds) and
`webhook-signature: v3,<hex HMAC-SHA256(secret, f"{id}.{timestamp}.{raw body}")>`.
A delivery is retried with exponential backoff, a bounded number of times; the id stays the
same across retries so a receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable

import httpx

logger = logging.getLogger(__name__)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"v3,{digest}"


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side (used by tests and documented for clients)."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    return hmac.compare_digest(expected, headers["webhook-signature"])


class WebhookSender:
    def __init__(
        self,
        secret: str,
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._sleep = sleep

    def deliver(self, url: str, message_id: str, body: bytes) -> bool:
        """POST `body` to `url`; True once a 2xx answer came back, False after the last attempt."""
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
