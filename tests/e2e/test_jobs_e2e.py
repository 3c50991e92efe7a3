"""Through the real server: cancel as the worker claims, a canceled synchronous call, many
synchronous waiters that cost no CPU while they wait, and per-route HTTP metrics."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e_support import (  # isort: skip
    LiveServer,
    cpu_seconds,
    get_job,
    png,
    start_server,
    submit,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data", model="fake:0.02", env={"STEPEDIT_MAX_QUEUE": "400"})
    yield server
    server.stop()


def test_cancel_as_the_worker_claims_ends_canceled(server: LiveServer) -> None:
    """25 jobs canceled right after submission, as the idle worker picks each up."""
    outcomes = []
    for _ in range(25):
        job_id = submit(server.base_url, steps=3)
        canceled = httpx.post(f"{server.base_url}/v1/jobs/{job_id}/cancel", timeout=30)
        assert canceled.status_code == 200, canceled.text
        wait_until(
            lambda: (
                get_job(server.base_url, job_id)["status"]  # noqa: B023
                in ("succeeded", "failed", "canceled")
            )
        )
        job = get_job(server.base_url, job_id)
        outcomes.append((job["status"], (job["error"] or {}).get("code")))
    assert set(outcomes) == {("canceled", "canceled")}, outcomes


def test_a_synchronous_call_whose_job_is_canceled_gets_409(server: LiveServer) -> None:
    answers: list[httpx.Response] = []

    def edit() -> None:
        answers.append(
            httpx.post(
                f"{server.base_url}/v1/images/edits",
                files={"image": ("a.png", png(), "image/png")},
                data={"model": "step-1x-edit", "prompt": "x", "num_inference_steps": "100"},
                timeout=120,
            )
        )

    caller = threading.Thread(target=edit)
    caller.start()
    jobs: list[dict[str, object]] = []

    def running() -> bool:
        jobs[:] = httpx.get(f"{server.base_url}/v1/jobs", timeout=10).json()["data"]
        return bool(jobs) and jobs[0]["status"] == "processing"

    wait_until(running)
    httpx.post(f"{server.base_url}/v1/jobs/{jobs[0]['id']}/cancel", timeout=30)
    caller.join(60)
    (answer,) = answers
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "canceled"  # OpenAI's shape


def test_many_synchronous_waiters_cost_no_cpu_while_they_wait(tmp_path: Path) -> None:
    """100 callers wait on their jobs (one runs, the rest queue behind it, 0.5 s per step):
    the server's CPU time while they wait is that of a few requests, not of 100 pollers."""
    server = start_server(tmp_path / "data", model="fake:0.5", env={"STEPEDIT_MAX_QUEUE": "400"})
    try:

        async def call_all() -> list[int]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as http:

                async def one() -> int:
                    response = await http.post(
                        "/v1/images/edits",
                        files={"image": ("a.png", png(), "image/png")},
                        data={"model": "step-1x-edit", "prompt": "x", "num_inference_steps": "1"},
                    )
                    return response.status_code

                return list(await asyncio.gather(*(one() for _ in range(100))))

        results: list[int] = []
        caller = threading.Thread(target=lambda: results.extend(asyncio.run(call_all())))
        caller.start()
        wait_until(lambda: _queued(server) >= 60, 120, "the callers to be waiting")
        pid = server.process.pid
        before = cpu_seconds(pid)
        threading.Event().wait(3.0)  # a window of waiting (a poller every 0.1 s: ~3000 reads)
        used = cpu_seconds(pid) - before
        assert used < 0.6, f"{used:.2f} s of CPU in 3 s of waiting"
        answered = httpx.get(f"{server.base_url}/health", timeout=10)
        assert answered.status_code == 200
        server.stop()  # the waiters are answered at once (503), not left hanging
        caller.join(120)
        assert not caller.is_alive()
        assert set(results) <= {200, 503}
    finally:
        server.stop()


def _queued(server: LiveServer) -> int:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    found = re.search(r"^stepedit_queue_depth (\S+)$", metrics, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_http_metrics_per_route_next_to_the_job_metrics(server: LiveServer) -> None:
    job_id = submit(server.base_url, steps=1)
    for _ in range(3):
        get_job(server.base_url, job_id)
    httpx.get(f"{server.base_url}/v1/jobs/0123456789abcdef0123456789abcdef", timeout=10)
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert re.search(
        r'stepedit_http_requests_total\{method="GET",route="/v1/jobs/\{job_id\}",status="200"\} '
        r"([3-9]|\d\d)",
        metrics,
    ), metrics
    assert 'route="/v1/jobs/{job_id}",status="404"' in metrics
    assert 'stepedit_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in metrics
    assert 'stepedit_http_request_duration_seconds_bucket{le="0.005",method="GET"' in metrics
    assert job_id not in metrics  # ids do not become series
    assert "stepedit_jobs_submitted_total" in metrics and "stepedit_queue_depth" in metrics
