"""SIGTERM on the real server: the running edit finishes within the grace period, or is handed
back to the queue without counting an attempt; two deploys during one edit do not fail it;
a synchronous call waiting for its job is answered at once (503, Retry-After), not held."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepedit.jobs.service import JobService
from stepedit.settings import Settings

from e2e_support import LiveServer, get_job, png, start_server, submit, wait_until  # isort: skip

pytestmark = pytest.mark.slow


def terminate(server: LiveServer) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(120)  # a guard against a hang, not a measure


def stored(data_dir: Path, job_id: str) -> Any:
    service = JobService(Settings(data_dir=data_dir))
    try:
        return service.get_sync(job_id, None)
    finally:
        service.close()


def running(base_url: str, job_id: str) -> bool:
    job = get_job(base_url, job_id)
    return bool(job["status"] == "processing" and job["progress"]["step"] >= 1)


def test_sigterm_lets_the_running_edit_finish(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, model="fake:0.2", env={"STEPEDIT_SHUTDOWN_GRACE_S": "60"})
    job_id = submit(server.base_url, steps=10)  # about 2 s
    wait_until(lambda: get_job(server.base_url, job_id)["status"] == "processing")
    assert terminate(server) in (0, -signal.SIGTERM), server.log()
    view = stored(data_dir, job_id)
    assert view.status.value == "succeeded" and view.attempt == 1


def test_two_deploys_during_one_edit_do_not_fail_it(tmp_path: Path) -> None:
    """The edit outlasts the grace twice: each time it is handed back, uncounted; with
    max_attempts=1 it would otherwise fail "interrupted" at the second restart."""
    data_dir = tmp_path / "data"
    env = {"STEPEDIT_SHUTDOWN_GRACE_S": "0.5", "STEPEDIT_MAX_ATTEMPTS": "1"}
    server = start_server(data_dir, model="fake:0.3", env=env)
    job_id = submit(server.base_url, steps=40)  # 12 s: longer than the grace
    for deploy in range(2):
        wait_until(lambda: running(server.base_url, job_id))  # noqa: B023
        assert terminate(server) in (0, -signal.SIGTERM), server.log()
        view = stored(data_dir, job_id)
        assert view.status.value == "queued", server.log()
        # The restart after the first deploy is as slow (the second deploy catches the edit
        # running again); the last one is quick, so the edit completes.
        server = start_server(data_dir, model="fake:0.3" if deploy == 0 else "fake:0.01", env=env)
    wait_until(lambda: get_job(server.base_url, job_id)["status"] in ("succeeded", "failed"))
    job = get_job(server.base_url, job_id)
    server.stop()
    assert job["status"] == "succeeded", job
    assert stored(data_dir, job_id).attempt == 3


def test_a_waiting_synchronous_call_is_answered_at_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"STEPEDIT_SHUTDOWN_GRACE_S": "1"}
    server = start_server(data_dir, model="fake:0.5", env=env)
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
    wait_until(
        lambda: any(
            job["status"] == "processing"
            for job in httpx.get(f"{server.base_url}/v1/jobs", timeout=10).json()["data"]
        )
    )
    server.process.send_signal(signal.SIGTERM)
    caller.join(60)  # the job would take 50 s: the call ends long before
    assert not caller.is_alive()
    server.process.wait(120)
    (answer,) = answers
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["type"] == "service_unavailable_error"  # OpenAI's shape
    assert int(answer.headers["retry-after"]) > 0
    assert "restart" in answer.json()["error"]["message"]


def test_no_new_work_is_accepted_while_shutting_down(tmp_path: Path) -> None:
    """Between SIGTERM and exit (the running edit's grace), new connections are refused and
    the job service takes no new jobs."""
    data_dir = tmp_path / "data"
    server = start_server(data_dir, model="fake:0.2", env={"STEPEDIT_SHUTDOWN_GRACE_S": "60"})
    job_id = submit(server.base_url, steps=15)
    wait_until(lambda: get_job(server.base_url, job_id)["status"] == "processing")
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: _refused(server.base_url), 30, "the listener to close")
    assert server.process.wait(120) in (0, -signal.SIGTERM)
    assert stored(data_dir, job_id).status.value == "succeeded"


def _refused(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/health", timeout=2)
    except httpx.TransportError:
        return True
    return False
