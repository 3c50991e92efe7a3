"""Signed webhook delivery, as WaveSpeedAI documents it (docs/verify-webhooks).

Every delivery is a POST of the JSON body with the headers
    webhook-id: <job id>                       (the same on every retry: receivers drop repeats)
    webhook-timestamp: <unix seconds>          (receivers refuse ones older than 5 minutes)
    webhook-signature: v3,<hex HMAC-SHA256>    of f"{webhook-id}.{webhook-timestamp}.{raw body}"
    content-type: application/json
The HMAC key is the secret *without* its `whsec_` prefix, as text (not base64-decoded).

Each owner (an API key; anonymous callers share one) has its own secret (`WebhookSecrets`).
After a rotation the header carries two space-separated signatures, `v3,<new> v3,<old>`, for
`webhook_secret_overlap` (24 h by default), so a receiver that still holds the old secret keeps
verifying while it is updated; a receiver accepts a delivery when any entry matches.

One call of `WebhookSender.send` is one attempt, bounded as a whole by `timeout_s`; retries are
scheduled by the outbox (`RetryPolicy`, docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from stepedit.errors import InvalidInput
from stepedit.inputs import is_blocked_address, pin_to_address
from stepedit.jobs.models import utcnow
from stepedit.jobs.store import JobStore
from stepedit.settings import WEBHOOK_SECRET_PREFIX, Settings

logger = logging.getLogger(__name__)

SIGNATURE_VERSION = "v3"
MAX_AGE_S = 300  # WaveSpeedAI's WebhookMaxAgeSeconds


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret: the rest of it, as text."""
    return secret.removeprefix(WEBHOOK_SECRET_PREFIX).encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION},{digest}"


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """One `v3,<hex>` per secret (the current one first), space-separated."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_)


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_age_s: float | None = MAX_AGE_S,
    now: float | None = None,
) -> bool:
    """A receiver's check: some signature entry matches and the timestamp is recent."""
    timestamp = int(headers["webhook-timestamp"])
    if max_age_s is not None and abs((now or time.time()) - timestamp) > max_age_s:
        return False
    expected = sign(secret, headers["webhook-id"], timestamp, body)
    return any(
        hmac.compare_digest(expected, entry) for entry in headers["webhook-signature"].split()
    )


def new_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_hex(24)


def check_webhook_url(url: str) -> None:
    """Refuse a webhook URL that cannot work, at submission (the address is checked at delivery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise InvalidInput("webhook: an http(s) URL is required", param="webhook")


def destination_key(url: str) -> str:
    """Deliveries to one host:port share its concurrency limit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


class BlockedDestination(Exception):
    """The URL's host resolves to a loopback/private/reserved address (never retried)."""


def destination_address(
    url: str, *, allow_private: bool
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to connect to for `url`: None when it does not resolve; BlockedDestination
    when (unless `allow_private`) any of its addresses is loopback/private/reserved."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        return None
    if not allow_private and any(is_blocked_address(a) for a in addresses):
        raise BlockedDestination(host)
    return addresses[0]


@dataclass(frozen=True)
class RetryPolicy:
    """Attempt 1 at once; attempt n+1 `backoff_s * 2**(n-1)` later, at most `max_backoff_s`;
    none after `max_attempts`. Defaults (30 s, 2 h, 12): retries after 30 s, 1, 2, 4, 8, 16,
    32 and 64 min, then every 2 h: the last one about 8 hours after the first."""

    max_attempts: int = 12
    backoff_s: float = 30.0
    max_backoff_s: float = 7200.0

    def delay_after(self, attempts: int) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones; None: give up."""
        if attempts >= self.max_attempts:
            return None
        return min(self.backoff_s * 2 ** (attempts - 1), self.max_backoff_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.webhook_max_attempts,
            settings.webhook_backoff_s,
            settings.webhook_max_backoff_s,
        )


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt."""

    is_delivered: bool
    status: int | None = None  # the receiver's HTTP status, when it answered
    error: str | None = None
    is_permanent: bool = False  # no retry can succeed (a blocked address)


class WebhookSender:
    """One signed POST per `send`, bounded as a whole by `timeout_s` (a receiver that trickles
    its answer cannot hold a delivery slot longer). Used from the outbox's event loop."""

    def __init__(
        self, *, timeout_s: float = 10.0, allow_private: bool = False, max_connections: int = 16
    ) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None

    async def send(
        self, url: str, message_id: str, body: bytes, signing_secrets: Sequence[str]
    ) -> Attempt:
        try:
            address = await asyncio.to_thread(
                destination_address, url, allow_private=self.allow_private
            )
        except BlockedDestination:
            return Attempt(False, error="the host resolves to a private address", is_permanent=True)
        if address is None:
            return Attempt(False, error="the host does not resolve")
        # Connect to the checked address itself (Host header and TLS name unchanged), so the
        # name cannot be re-resolved to a blocked address between the check and the send.
        pinned_url, host_header, extensions = pin_to_address(urlsplit(url), address)
        timestamp = int(time.time())
        headers = {
            "host": host_header,
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(signing_secrets, message_id, timestamp, body),
        }
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._http().post(
                    pinned_url, content=body, headers=headers, extensions=extensions
                )
        except TimeoutError:
            return Attempt(False, error=f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= response.status_code < 300:
            return Attempt(True, status=response.status_code)
        return Attempt(False, status=response.status_code, error=f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout_s, follow_redirects=False, limits=self._limits
            )
        return self._client


class WebhookSecrets:
    """Each owner's signing secret, in the job store (so every node of a fleet signs alike).

    An owner's first secret is generated when first asked for. Anonymous callers (owner None)
    share one: `webhook_secret` when set (rotate it by changing the setting), else the one
    generated into data_dir by earlier releases, kept in the store from then on.
    """

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def current(self, owner: str | None) -> str:
        if owner is None and self.settings.webhook_secret:
            return self.settings.webhook_secret
        record = self.store.webhook_secret(_owner_key(owner))
        if record is None:
            first = self.settings.resolved_webhook_secret() if owner is None else new_secret()
            record = self.store.add_webhook_secret(_owner_key(owner), first)
        return record.secret

    def signing(self, owner: str | None) -> list[str]:
        """The secrets a delivery is signed with: the current one, and the previous one during
        the overlap after a rotation."""
        current = self.current(owner)
        if owner is None and self.settings.webhook_secret:
            return [current]
        record = self.store.webhook_secret(_owner_key(owner))
        overlap: timedelta = self.settings.webhook_secret_overlap
        if (
            record is not None
            and record.previous_secret
            and record.rotated_at is not None
            and utcnow() - record.rotated_at < overlap
        ):
            return [current, record.previous_secret]
        return [current]

    def rotate(self, owner: str | None) -> str:
        """A new secret for `owner`; the old one still signs for `webhook_secret_overlap`."""
        if owner is None and self.settings.webhook_secret:
            raise InvalidInput(
                "the anonymous webhook secret is set by STEPEDIT_WEBHOOK_SECRET; change it there"
            )
        self.current(owner)  # the first secret exists, so a rotation keeps it as previous
        return self.store.rotate_webhook_secret(_owner_key(owner), new_secret()).secret


def _owner_key(owner: str | None) -> str:
    return owner or ""
