"""A model that cannot be loaded (issue 10): /health says "failed" with the reason, every API
flavour answers 503 in its own error shape before anything is stored, a synchronous call that
was already waiting ends with 503 instead of hanging, the jobs accepted before the failure stay
queued and run after a restart with a working model, and the real server still exits on SIGTERM.
"""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.jobs.health import HealthStatus
from stepedit.jobs.service import JobService
from stepedit.jobs.state import JobStatus
from stepedit.request import EditRequest
from stepedit.settings import Settings

REASON = "no such checkpoint: /models/missing"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png()).decode()


def broken_loader(gate: threading.Event | None = None) -> Callable[[], FakeEditor]:
    def load() -> FakeEditor:
        if gate is not None:
            gate.wait()
        raise OSError(REASON)

    return load


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        model="fake",
        data_dir=tmp_path / "data",
        safety_checker=False,
        public_base_url="http://testserver",
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[JobService]:
    service = JobService(settings)
    service.recover()
    yield service
    service.close()


def failed_worker(service: JobService) -> InProcessWorker:
    worker = InProcessWorker(service, broken_loader(), poll_s=0.05)
    worker.start()
    worker.stop()  # the thread ends as soon as the load has failed
    return worker


def test_health_says_failed_with_the_reason(settings: Settings, service: JobService) -> None:
    worker = failed_worker(service)
    assert isinstance(worker.load_error, OSError)
    with TestClient(create_app(settings, service)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failed" and REASON in body["reason"]
    assert "model_version" in body


# (flavour, method, path, request kwargs, check of the error body)
FLAVOURS: list[tuple[str, str, dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    (
        "native",
        "/v1/jobs",
        {"files": {"image": ("a.png", png(), "image/png")}, "data": {"prompt": "x"}},
        lambda body: body["error"]["code"] == "service_unavailable",
    ),
    (
        "wavespeed",
        "/api/v3/wavespeed-ai/step1x-edit",
        {"json": {"prompt": "x", "image": base64.b64encode(png()).decode()}},
        lambda body: body["code"] == 503 and REASON in body["message"],
    ),
    (
        "openai_edits",
        "/v1/images/edits",
        {
            "files": {"image": ("a.png", png(), "image/png")},
            "data": {"model": "step-1x-edit", "prompt": "x"},
        },
        lambda body: body["error"]["type"] == "service_unavailable_error",
    ),
    (
        "generations",
        "/v1/images/generations",
        {"json": {"model": "stepfun-ai/step1x-edit", "prompt": "x", "image": data_uri()}},
        lambda body: body["error"]["type"] == "service_unavailable_error",
    ),
    (
        "reasoning",
        "/v1/image/edit/",
        {"json": {"model": "step1x-edit", "prompt": "x", "image": data_uri()}},
        lambda body: body["error"]["code"] == "service_unavailable",
    ),
]


@pytest.mark.parametrize(("flavour", "path", "kwargs", "shaped"), FLAVOURS, ids=lambda v: v)
def test_every_flavour_answers_503_and_stores_nothing(
    settings: Settings,
    service: JobService,
    flavour: str,
    path: str,
    kwargs: dict[str, Any],
    shaped: Callable[[dict[str, Any]], bool],
) -> None:
    failed_worker(service)
    with TestClient(create_app(settings, service)) as client:
        response = client.post(path, **kwargs)
    assert response.status_code == 503, response.text
    assert shaped(response.json()), response.text
    assert service.list_sync(None) == []
    assert list((settings.data_dir / "inputs").iterdir()) == []


def test_a_waiting_synchronous_call_ends_with_503_and_its_job_runs_after_a_restart(
    settings: Settings, service: JobService
) -> None:
    gate = threading.Event()
    worker = InProcessWorker(service, broken_loader(gate), poll_s=0.05)
    worker.start()
    responses: list[httpx.Response] = []
    with TestClient(create_app(settings, service)) as client:

        def edit() -> None:
            form = {"model": "step-1x-edit", "prompt": "x"}
            files = {"image": ("a.png", png(), "image/png")}
            responses.append(client.post("/v1/images/edits", data=form, files=files))

        caller = threading.Thread(target=edit)
        caller.start()
        while not service.list_sync(None) and caller.is_alive():  # accepted while loading
            time.sleep(0.01)
        assert service.health().status is HealthStatus.LOADING
        gate.set()  # the load fails while the call waits for its job
        caller.join(120)  # a guard only: the call would otherwise wait 600 s
        assert not caller.is_alive()
    worker.stop()
    (response,) = responses
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "service_unavailable_error"
    assert REASON in response.json()["error"]["message"]

    (job,) = service.list_sync(None)
    assert job.status is JobStatus.QUEUED  # not lost
    service.close()
    restarted = JobService(settings)
    restarted.recover()
    working = InProcessWorker(restarted, FakeEditor, poll_s=0.05)
    working.start()
    try:
        while not restarted.get_sync(job.id, None).is_terminal and working.is_alive:
            time.sleep(0.02)
        assert restarted.get_sync(job.id, None).status is JobStatus.SUCCEEDED
    finally:
        working.stop()
        restarted.close()


def test_jobs_queued_before_the_failure_keep_their_place(
    settings: Settings, service: JobService
) -> None:
    view = service.submit_sync(EditRequest(prompt="x"), png(), owner=None, flavour="native")
    failed_worker(service)
    with TestClient(create_app(settings, service)) as client:
        job = client.get(f"/v1/jobs/{view.id}")
    assert job.status_code == 200 and job.json()["status"] == "queued"


@pytest.mark.slow
def test_the_real_server_reports_the_failure_and_exits_on_sigterm(tmp_path: Path) -> None:
    """`stepedit serve` with a checkpoint directory that does not exist."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    command = [
        sys.executable, "-m", "stepedit.cli", "serve", "--model", str(tmp_path / "missing"),
        "--device", "cpu", "--port", str(port), "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        health = _wait_for_health(base, server, lambda body: body.get("status") == "failed")
        assert health["reason"], health
        refused = httpx.post(
            f"{base}/v1/jobs",
            files={"image": ("a.png", png(), "image/png")},
            data={"prompt": "x"},
            timeout=10,
        )
        assert refused.status_code == 503, refused.text
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal; 60 s is a guard against a hang
        assert server.wait(60) in (0, -signal.SIGTERM), log_path.read_text(errors="replace")
        assert "Application shutdown complete" in log_path.read_text(errors="replace")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_health(
    base: str, server: subprocess.Popen[bytes], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 180  # a guard against a hang, not a measure
    body: dict[str, Any] = {}
    while time.monotonic() < deadline and server.poll() is None:
        try:
            body = httpx.get(f"{base}/health", timeout=2).json()
            if done(body):
                return body
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no such health ({body}); exit code {server.poll()}")
