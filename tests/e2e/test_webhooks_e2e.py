"""Webhooks from the real server, checked the way a WaveSpeedAI client checks them: per-key
secrets from `GET /api/v3/webhook/secret`, the bare prediction body with `input`, and a delivery
cut off by SIGKILL sent again after the restart."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobs.receivers import Receiver

from e2e_support import png, start_server, wait_until  # isort: skip

pytestmark = pytest.mark.slow

SUBMIT = "/api/v3/wavespeed-ai/step1x-edit"
KEYS = ("key-alice", "key-bob")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wavespeed_body(**fields: object) -> dict[str, object]:
    return {"prompt": "make it red", "image": base64.b64encode(png()).decode(), **fields}


def test_a_wavespeed_client_verifies_its_own_keys_webhooks(tmp_path: Path) -> None:
    receiver = Receiver()
    env = {"STEPEDIT_ALLOW_PRIVATE_URLS": "true", "STEPEDIT_API_KEYS": ",".join(KEYS)}
    server = start_server(tmp_path / "data", model="fake:0.001", env=env)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            secrets = {
                key: http.get("/api/v3/webhook/secret", headers=auth(key)).json()["data"]["secret"]
                for key in KEYS
            }
            assert secrets[KEYS[0]] != secrets[KEYS[1]]
            submitted = http.post(
                SUBMIT,
                params={"webhook": receiver.url},
                json=wavespeed_body(seed=11, guidance_scale=5),
                headers=auth(KEYS[0]),
            )
            assert submitted.status_code == 200, submitted.text
            job_id = submitted.json()["data"]["id"]
            (delivery,) = receiver.wait_for(1)
            result = http.get(f"/api/v3/predictions/{job_id}/result", headers=auth(KEYS[0]))
        assert delivery.verifies_with(secrets[KEYS[0]])
        assert not delivery.verifies_with(secrets[KEYS[1]])
        body = delivery.json
        assert "code" not in body and "data" not in body  # not the response envelope
        assert list(body)[:3] == ["id", "model", "input"]
        assert body["id"] == job_id and body["model"] == "wavespeed-ai/step1x-edit"
        assert body["input"]["prompt"] == "make it red" and body["input"]["seed"] == 11
        assert body["status"] == "completed" and body["error"] == ""
        assert body["outputs"] == result.json()["data"]["outputs"]
        assert body["has_nsfw_contents"] == [False]
    finally:
        server.stop()
        receiver.close()


def test_a_delivery_cut_off_by_a_kill_is_sent_after_the_restart(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.hold.clear()  # the first delivery hangs: the server is killed mid-send
    env = {"STEPEDIT_ALLOW_PRIVATE_URLS": "true"}
    server = start_server(tmp_path / "data", model="fake:0.001", env=env)
    try:
        submitted = httpx.post(
            f"{server.base_url}{SUBMIT}",
            params={"webhook": receiver.url},
            json=wavespeed_body(),
            timeout=30,
        )
        job_id = submitted.json()["data"]["id"]
        receiver.wait_for(1)
        server.kill()
        receiver.hold.set()

        restarted = start_server(tmp_path / "data", model="fake:0.001", env=env)
        try:
            deliveries = receiver.wait_for(2)
            assert [d.job_id for d in deliveries] == [job_id, job_id]
            secret = httpx.get(f"{restarted.base_url}/api/v3/webhook/secret", timeout=10)
            assert deliveries[1].verifies_with(secret.json()["data"]["secret"])
            wait_until(
                lambda: (
                    httpx.get(f"{restarted.base_url}/v1/jobs/{job_id}", timeout=10).json()[
                        "webhook"
                    ]["state"]
                    == "delivered"
                ),
                what="the delivery recorded",
            )
        finally:
            restarted.stop()
    finally:
        server.stop()
        receiver.close()


def test_an_operator_rotates_a_keys_secret_from_the_command_line(tmp_path: Path) -> None:
    from stepedit.api.deps import owner_for_key
    from stepedit.jobs.service import JobService
    from stepedit.settings import Settings

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "stepedit.cli", "webhook-secret",
             "--data-dir", str(tmp_path / "data"), *args],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    old = cli("--api-key", KEYS[0])
    new = cli("--api-key", KEYS[0], "--rotate")
    assert old.startswith("whsec_") and new.startswith("whsec_") and new != old
    service = JobService(Settings(data_dir=tmp_path / "data"))
    try:
        owner = owner_for_key(KEYS[0])
        assert service.webhook_secret_for_sync(owner) == new
        assert service.secrets.signing(owner) == [new, old]  # both sign during the overlap
        assert service.webhook_secret_for_sync(owner_for_key(KEYS[1])) not in (old, new)
    finally:
        service.close()
