"""Shared server fixtures for the API tests.

- `settings`, `job_service`, `fake_editor`, `worker`, `app`, `client`: an in-process app over a
  temporary data dir, its queue served by a `FakeEditor` (no model, no torch).
- `live_server`: the real `stepedit serve` in a subprocess (call it with extra CLI args / env);
  returns a `LiveServer` with its `base_url`.
- `make_image`: `make_image(width, height)` -> PNG bytes for uploads.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from stepedit.api.app import create_app
from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.jobs.service import JobService
from stepedit.settings import Settings


def make_png(
    width: int = 64, height: int = 64, color: tuple[int, int, int] = (20, 120, 200)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return make_png


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        model="fake",
        data_dir=tmp_path / "data",
        webhook_backoff_s=0.05,
        webhook_timeout_s=2.0,
        safety_checker=False,
        public_base_url="http://testserver",
    )


@pytest.fixture
def job_service(settings: Settings) -> Iterator[JobService]:
    service = JobService(settings)
    service.recover()
    yield service
    service.close()


@pytest.fixture
def fake_editor() -> FakeEditor:
    return FakeEditor(step_delay_s=0.0)


@pytest.fixture
def worker(job_service: JobService, fake_editor: FakeEditor) -> Iterator[InProcessWorker]:
    worker = InProcessWorker(job_service, lambda: fake_editor, poll_s=0.05)
    worker.start()
    deadline = time.monotonic() + 5
    while not job_service.is_ready and time.monotonic() < deadline:
        time.sleep(0.01)
    yield worker
    worker.stop()


@pytest.fixture
def app(settings: Settings, job_service: JobService) -> FastAPI:
    return create_app(settings, job_service)


@pytest.fixture
def client(app: FastAPI, worker: InProcessWorker) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path
    log_path: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, as far as the server can tell)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    data_dir: Path,
    *args: str,
    model: str = "fake:0.01",
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> LiveServer:
    """`stepedit serve` in a subprocess; returns once /health answers 200."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}-{time.monotonic_ns()}.log"
    command = [
        sys.executable, "-m", "stepedit.cli", "serve", "--model", model,
        "--port", str(port), "--data-dir", str(data_dir), *args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {ready_timeout_s}s:\n{server.log()}")


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(*args: str, **kwargs: object) -> LiveServer:
        server = start_server(tmp_path / "data", *args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
