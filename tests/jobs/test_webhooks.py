"""Webhooks to a receiver on loopback: signature, single delivery, retries with backoff."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from stepedit.errors import InvalidInput
from stepedit.jobs.service import JobService, ProducedImage
from stepedit.jobs.webhooks import WebhookSender, sign, verify
from stepedit.request import EditRequest
from stepedit.settings import Settings


class Receiver:
    def __init__(self, failures_before_success: int = 0) -> None:
        self.failures_left = failures_before_success
        self.calls: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 200
                if receiver.failures_left > 0:
                    receiver.failures_left -= 1
                    status = 500
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.calls) >= count


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_one_job(service: JobService, webhook_url: str) -> str:
    view = service.submit_sync(
        EditRequest(prompt="x", seed=7),
        png(),
        owner=None,
        flavour="native",
        webhook_url=webhook_url,
    )
    assert service.claim_next(0) is not None
    image = ProducedImage(png(), 7, False, "png", 16, 16)
    service.complete(view.id, [image], prompt_used="x", passes=["edit"], inference_ms=1.0)
    return view.id


def test_signature_format_and_verification() -> None:
    signature = sign("whsec_abc", "msg1", 1700000000, b'{"a":1}')
    assert signature.startswith("v3,") and len(signature) == 3 + 64
    headers = {"webhook-id": "msg1", "webhook-timestamp": "1700000000"}
    assert verify("whsec_abc", {**headers, "webhook-signature": signature}, b'{"a":1}')
    assert not verify("whsec_abc", {**headers, "webhook-signature": signature}, b'{"a":2}')


def test_terminal_job_posts_one_signed_webhook(tmp_path: Path, receiver: Receiver) -> None:
    service = JobService(Settings(data_dir=tmp_path / "data", allow_private_urls=True))
    job_id = run_one_job(service, receiver.url)
    receiver.wait_for(1)
    time.sleep(0.3)  # a second delivery would have arrived by now
    assert len(receiver.calls) == 1
    headers, body = receiver.calls[0]
    assert service.webhook_secret.startswith("whsec_")
    assert verify(service.webhook_secret, headers, body)
    assert headers["webhook-id"] == job_id
    payload = json.loads(body)
    assert (payload["id"], payload["status"]) == (job_id, "succeeded")
    service.recover()  # a restart must not send it again
    time.sleep(0.2)
    assert len(receiver.calls) == 1
    service.close()


def test_flavour_renderer_shapes_the_body(tmp_path: Path, receiver: Receiver) -> None:
    service = JobService(Settings(data_dir=tmp_path / "data", allow_private_urls=True))
    service.register_webhook_renderer("native", lambda view: {"custom": view.status.value})
    run_one_job(service, receiver.url)
    receiver.wait_for(1)
    assert json.loads(receiver.calls[0][1]) == {"custom": "succeeded"}
    service.close()


def test_failed_deliveries_are_retried_with_backoff() -> None:
    receiver = Receiver(failures_before_success=2)
    sleeps: list[float] = []
    sender = WebhookSender(
        "whsec_x", max_attempts=5, backoff_s=0.5, allow_private=True, sleep=sleeps.append
    )
    try:
        assert sender.deliver(receiver.url, "job1", b"{}")
    finally:
        receiver.server.shutdown()
    assert len(receiver.calls) == 3
    assert sleeps == [0.5, 1.0]
    assert {headers["webhook-id"] for headers, _ in receiver.calls} == {"job1"}


def test_retries_are_bounded() -> None:
    receiver = Receiver(failures_before_success=100)
    sender = WebhookSender(
        "whsec_x", max_attempts=3, backoff_s=0.0, allow_private=True, sleep=lambda _s: None
    )
    try:
        assert not sender.deliver(receiver.url, "job1", b"{}")
    finally:
        receiver.server.shutdown()
    assert len(receiver.calls) == 3


def test_secret_is_generated_once_and_persisted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = settings.resolved_webhook_secret()
    assert secret.startswith("whsec_") and len(secret) > 30
    assert Settings(data_dir=tmp_path / "data").resolved_webhook_secret() == secret


def test_private_destinations_are_refused_by_default() -> None:
    receiver = Receiver()
    try:
        assert not WebhookSender("whsec_x", max_attempts=1).deliver(receiver.url, "job1", b"{}")
    finally:
        receiver.server.shutdown()
    assert receiver.calls == []


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http:///nohost"])
def test_unusable_webhook_urls_are_refused_at_submit(tmp_path: Path, url: str) -> None:
    service = JobService(Settings(data_dir=tmp_path / "data"))
    with pytest.raises(InvalidInput):
        service.submit_sync(
            EditRequest(prompt="x"), png(), owner=None, flavour="native", webhook_url=url
        )
    service.close()


def test_delivery_connects_to_the_checked_address_and_keeps_the_host_name(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once: a second resolution (DNS rebinding) is never consulted."""
    port = receiver.server.server_address[1]
    resolutions: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def resolve_once(host: str, *args: object, **kwargs: object) -> object:
        resolutions.append(host)
        if host == "hooks.example.test":
            if resolutions.count(host) > 1:
                raise AssertionError("the webhook host was resolved a second time")
            return real_getaddrinfo("127.0.0.1", *args, **kwargs)  # type: ignore[arg-type]
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolve_once)
    sender = WebhookSender("whsec_x", max_attempts=1, allow_private=True)
    assert sender.deliver(f"http://hooks.example.test:{port}/hook", "job1", b"{}")
    receiver.wait_for(1)
    headers, _body = receiver.calls[0]
    assert headers["host"] == f"hooks.example.test:{port}"
    assert resolutions.count("hooks.example.test") == 1


def test_a_name_rebound_to_a_blocked_address_after_the_check_is_not_reached(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer passes the check, a later one points at the receiver on
    127.0.0.1. The sender must connect to the checked address, never re-resolve the name."""
    import stepedit.jobs.webhooks as webhooks

    checked = ipaddress.ip_address("127.0.0.2")  # stands in for a public address
    monkeypatch.setattr(webhooks, "is_blocked_address", lambda address: address != checked)
    answers = iter(["127.0.0.2", "127.0.0.1", "127.0.0.1"])
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host: str, *args: object, **kwargs: object) -> object:
        if host == "rebind.example.test":
            return real_getaddrinfo(next(answers), *args, **kwargs)  # type: ignore[arg-type]
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = receiver.server.server_address[1]
    sender = WebhookSender("whsec_x", max_attempts=1)
    assert not sender.deliver(f"http://rebind.example.test:{port}/hook", "job1", b"{}")
    time.sleep(0.2)
    assert receiver.calls == []
