"""Webhooks to real receivers on loopback that verify them as WaveSpeedAI's docs say: the HMAC
key without `whsec_`, per-owner secrets and rotation, durable delivery with a backoff schedule,
the last failure on the job, and one slow receiver never holding up another."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import ipaddress
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from stepedit.errors import InvalidInput
from stepedit.jobs.service import JobService, ProducedImage
from stepedit.jobs.views import to_native_dict
from stepedit.jobs.webhooks import RetryPolicy, WebhookSender, sign, verify
from stepedit.request import EditRequest
from stepedit.settings import Settings

from .receivers import Receiver, wait_until, wavespeed_verifies


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_service(tmp_path: Path, **overrides: Any) -> JobService:
    settings = Settings(
        data_dir=tmp_path / "data",
        allow_private_urls=True,
        database_url=overrides.pop("database_url", None),
        **overrides,
    )
    service = JobService(settings)
    service.recover()
    return service


def run_one_job(service: JobService, webhook_url: str, owner: str | None = None) -> str:
    view = service.submit_sync(
        EditRequest(prompt="x", seed=7),
        png(),
        owner=owner,
        flavour="native",
        webhook_url=webhook_url,
    )
    claimed = service.claim_next(0)
    assert claimed is not None and claimed.id == view.id
    image = ProducedImage(png(), 7, False, "png", 16, 16)
    service.complete(view.id, [image], prompt_used="x", passes=["edit"], inference_ms=1.0)
    return view.id


def test_signature_uses_the_secret_without_its_prefix_as_wavespeed_documents() -> None:
    body = b'{"id":"msg1"}'
    expected = hmac.new(b"abc", b"msg1.1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("whsec_abc", "msg1", 1700000000, body) == f"v3,{expected}"
    headers = {"webhook-id": "msg1", "webhook-timestamp": "1700000000"}
    signed = {**headers, "webhook-signature": f"v3,{expected}"}
    assert verify("whsec_abc", signed, body, max_age_s=None)
    assert not verify("whsec_abc", signed, b'{"id":"msg2"}', max_age_s=None)
    assert not verify("whsec_abc", signed, body)  # a 2023 timestamp is a replay


def test_terminal_job_posts_one_delivery_the_receiver_verifies(
    tmp_path: Path, receiver: Receiver
) -> None:
    service = make_service(tmp_path)
    job_id = run_one_job(service, receiver.url)
    (delivery,) = receiver.wait_for(1)
    secret = service.webhook_secret_for_sync(None)
    assert secret.startswith("whsec_") and secret == service.webhook_secret
    assert delivery.verifies_with(secret)
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.job_id == job_id
    assert (delivery.json["id"], delivery.json["status"]) == (job_id, "succeeded")
    wait_until(lambda: service.get_sync(job_id, None).webhook.state == "delivered")  # type: ignore[union-attr]
    service.recover()  # a restart must not send it again
    service.deliver_pending_webhooks()
    time.sleep(0.3)
    assert len(receiver.deliveries) == 1
    service.close()


def test_each_api_key_has_its_own_secret(tmp_path: Path, receiver: Receiver) -> None:
    service = make_service(tmp_path)
    alice, bob = service.webhook_secret_for_sync("alice"), service.webhook_secret_for_sync("bob")
    assert alice != bob and alice.startswith("whsec_") and bob.startswith("whsec_")
    assert service.webhook_secret_for_sync("alice") == alice  # kept
    run_one_job(service, receiver.url, owner="alice")
    (delivery,) = receiver.wait_for(1)
    assert delivery.verifies_with(alice)
    assert not delivery.verifies_with(bob)
    service.close()
    restarted = make_service(tmp_path)  # stored, not held in memory
    assert restarted.webhook_secret_for_sync("alice") == alice
    restarted.close()


def test_a_rotated_secret_signs_with_old_and_new_until_the_overlap_ends(
    tmp_path: Path, receiver: Receiver
) -> None:
    service = make_service(tmp_path)
    old = service.webhook_secret_for_sync("alice")
    new = service.rotate_webhook_secret_sync("alice")
    assert new != old and service.webhook_secret_for_sync("alice") == new
    run_one_job(service, receiver.url, owner="alice")
    (during,) = receiver.wait_for(1)
    assert during.verifies_with(new) and during.verifies_with(old)
    assert during.headers["webhook-signature"].startswith("v3,")
    service.close()

    after_overlap = make_service(tmp_path, webhook_secret_overlap=timedelta(0))
    run_one_job(after_overlap, receiver.url, owner="alice")
    after = receiver.wait_for(2)[1]
    assert after.verifies_with(new) and not after.verifies_with(old)
    assert len(after.headers["webhook-signature"].split()) == 1
    after_overlap.close()


def test_a_configured_anonymous_secret_is_rotated_in_the_settings(tmp_path: Path) -> None:
    service = make_service(tmp_path, webhook_secret="whsec_" + "cd" * 24)
    assert service.webhook_secret_for_sync(None) == "whsec_" + "cd" * 24
    with pytest.raises(InvalidInput):
        service.rotate_webhook_secret_sync(None)
    service.close()


def test_the_retry_schedule_spans_hours() -> None:
    policy = RetryPolicy.from_settings(Settings())
    delays = [policy.delay_after(n) for n in range(1, policy.max_attempts)]
    assert delays[:4] == [30, 60, 120, 240] and max(d or 0 for d in delays) == 7200
    assert policy.delay_after(policy.max_attempts) is None
    total = sum(d or 0 for d in delays)
    assert 6 * 3600 < total < 10 * 3600  # "over about 8 hours"


def test_a_failed_attempt_is_recorded_and_not_retried_before_it_is_due(tmp_path: Path) -> None:
    receiver = Receiver(statuses=[500])
    service = make_service(tmp_path, webhook_backoff_s=3600)
    try:
        job_id = run_one_job(service, receiver.url)
        receiver.wait_for(1)
        wait_until(lambda: service.get_sync(job_id, None).webhook.attempts == 1)  # type: ignore[union-attr]
        webhook = service.get_sync(job_id, None).webhook
        assert webhook is not None
        assert (webhook.state, webhook.last_status, webhook.last_error) == (
            "pending",
            500,
            "HTTP 500",
        )
        assert webhook.last_attempt_at is not None and webhook.next_attempt_at is not None
        due_in = (webhook.next_attempt_at - webhook.last_attempt_at).total_seconds()
        assert 3500 < due_in < 3700
        shown = to_native_dict(service.get_sync(job_id, None))["webhook"]
        assert shown["last_status"] == 500 and shown["state"] == "pending"
        assert shown["next_attempt_at"] is not None
        for _ in range(20):  # sweeps and restarts do not resend before it is due
            service.deliver_pending_webhooks()
        service.recover()
        time.sleep(0.5)
        assert len(receiver.deliveries) == 1
    finally:
        service.close()
        receiver.close()


def test_a_due_retry_is_sent_and_then_delivered(tmp_path: Path) -> None:
    receiver = Receiver(statuses=[503, 502])
    service = make_service(tmp_path, webhook_backoff_s=0.05, webhook_max_backoff_s=0.1)
    try:
        job_id = run_one_job(service, receiver.url)
        receiver.wait_for(3)
        wait_until(lambda: service.get_sync(job_id, None).webhook.state == "delivered")  # type: ignore[union-attr]
        webhook = service.get_sync(job_id, None).webhook
        assert webhook is not None and webhook.attempts == 3 and webhook.last_status == 200
        assert {d.job_id for d in receiver.deliveries} == {job_id}  # one id across retries
    finally:
        service.close()
        receiver.close()


def test_attempts_are_bounded(tmp_path: Path) -> None:
    receiver = Receiver(statuses=[500] * 100)
    service = make_service(
        tmp_path, webhook_backoff_s=0.01, webhook_max_backoff_s=0.01, webhook_max_attempts=3
    )
    try:
        job_id = run_one_job(service, receiver.url)
        wait_until(lambda: service.get_sync(job_id, None).webhook.state == "failed")  # type: ignore[union-attr]
        assert len(receiver.deliveries) == 3
    finally:
        service.close()
        receiver.close()


def test_a_delivery_cut_off_by_a_crash_is_sent_after_restart(tmp_path: Path) -> None:
    """The sender took the entry (sending) and the process died before recording anything."""
    receiver = Receiver()
    first = make_service(tmp_path)
    try:
        first.outbox.close()  # this process will never deliver: it "dies" mid-send
        job_id = run_one_job(first, receiver.url)
        due_at = first.store.next_webhook_due()
        assert due_at is not None
        assert [entry.job_id for entry in first.store.due_webhooks(due_at, 10)] == [job_id]
        taken = first.store.take_webhook(job_id, due_at, due_at + timedelta(hours=1))
        assert taken is not None
        assert first.get_sync(job_id, None).webhook.state == "sending"  # type: ignore[union-attr]
        first.store.close()

        restarted = make_service(tmp_path)  # recover(): the lease of a dead sender is released
        (delivery,) = receiver.wait_for(1)
        assert delivery.job_id == job_id
        assert delivery.verifies_with(restarted.webhook_secret)
        wait_until(lambda: restarted.get_sync(job_id, None).webhook.state == "delivered")  # type: ignore[union-attr]
        restarted.close()
    finally:
        receiver.close()


def test_a_hanging_receiver_does_not_hold_up_another_tenants_delivery(tmp_path: Path) -> None:
    slow, fast = Receiver(), Receiver()
    slow.hold.clear()  # its handlers block until released
    service = make_service(
        tmp_path, webhook_concurrency=4, webhook_per_destination=2, webhook_timeout_s=60
    )
    try:
        for _ in range(5):
            run_one_job(service, slow.url, owner="tenant-a")
        slow.wait_for(2)
        fast_job = run_one_job(service, fast.url, owner="tenant-b")
        (delivery,) = fast.wait_for(1)
        assert delivery.job_id == fast_job
        assert slow.active == 2 and slow.most_active == 2  # bounded per destination
        assert len(slow.deliveries) == 2  # the other three wait their turn, not in flight
    finally:
        slow.hold.set()
        service.close()
        slow.close()
        fast.close()


def test_an_attempt_is_bounded_by_the_timeout_as_a_whole(tmp_path: Path) -> None:
    """A receiver that accepts the request and never answers costs one timeout, then a retry
    is scheduled with the failure recorded."""
    hanging = Receiver()
    hanging.hold.clear()
    service = make_service(tmp_path, webhook_timeout_s=0.5, webhook_backoff_s=3600)
    try:
        job_id = run_one_job(service, hanging.url)
        wait_until(lambda: service.get_sync(job_id, None).webhook.attempts == 1)  # type: ignore[union-attr]
        webhook = service.get_sync(job_id, None).webhook
        assert webhook is not None and webhook.state == "pending"
        assert webhook.last_status is None and "no answer within" in (webhook.last_error or "")
    finally:
        hanging.hold.set()
        service.close()
        hanging.close()


def test_private_destinations_are_refused_by_default_and_not_retried(
    tmp_path: Path, receiver: Receiver
) -> None:
    service = make_service(tmp_path)
    service.webhooks.allow_private = False  # type: ignore[union-attr]
    job_id = run_one_job(service, receiver.url)
    wait_until(lambda: service.get_sync(job_id, None).webhook.state == "failed")  # type: ignore[union-attr]
    assert receiver.deliveries == []
    assert "private" in (service.get_sync(job_id, None).webhook.last_error or "")  # type: ignore[union-attr]
    service.close()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http:///nohost"])
def test_unusable_webhook_urls_are_refused_at_submit(tmp_path: Path, url: str) -> None:
    service = JobService(Settings(data_dir=tmp_path / "data"))
    with pytest.raises(InvalidInput):
        service.submit_sync(
            EditRequest(prompt="x"), png(), owner=None, flavour="native", webhook_url=url
        )
    service.close()


def test_secret_is_generated_once_and_persisted(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = settings.resolved_webhook_secret()
    assert secret.startswith("whsec_") and len(secret) > 30
    assert Settings(data_dir=tmp_path / "data").resolved_webhook_secret() == secret


def send(sender: WebhookSender, url: str) -> bool:
    return asyncio.run(sender.send(url, "job1", b"{}", ["whsec_x"])).is_delivered


def test_delivery_connects_to_the_checked_address_and_keeps_the_host_name(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once: a second resolution (DNS rebinding) is never consulted."""
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
    sender = WebhookSender(allow_private=True)
    assert send(sender, f"http://hooks.example.test:{receiver.port}/hook")
    (delivery,) = receiver.wait_for(1)
    assert delivery.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert wavespeed_verifies("whsec_x", delivery.headers, delivery.body)
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
    sender = WebhookSender()
    assert not send(sender, f"http://rebind.example.test:{receiver.port}/hook")
    time.sleep(0.2)
    assert receiver.deliveries == []
