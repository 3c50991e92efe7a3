"""The real app over a real model for the API tests: `in_process(settings)` runs the job
service, the in-process worker (which loads `settings.model`, e.g. the tiny random
`dummy:tiny-v1.1`, on the CPU) and a TestClient, as `stepedit serve` does, without a
subprocess."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient
from PIL import Image

from stepedit.api.app import create_app
from stepedit.engine import InProcessWorker, load_editor
from stepedit.jobs.service import JobService
from stepedit.settings import Settings

TINY_MODEL = "dummy:tiny-v1.1"
LOAD_TIMEOUT_S = 300.0


@contextmanager
def in_process(settings: Settings) -> Iterator[TestClient]:
    service = JobService(settings)
    worker = InProcessWorker(service, lambda: load_editor(settings), poll_s=0.05)
    worker.start()
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while not service.is_ready and time.monotonic() < deadline:
        assert worker.load_error is None, worker.load_error
        time.sleep(0.05)
    assert service.is_ready, "the model did not load"
    try:
        with TestClient(create_app(settings, service)) as client:
            yield client
    finally:
        worker.stop()
        service.close()


def download(client: TestClient, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def wait_for_job(client: TestClient, job_id: str, timeout_s: float = 120.0) -> dict[str, object]:
    """The native job once it ended (the tests compare what it produced)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")
