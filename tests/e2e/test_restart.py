"""A restart loses no accepted job: the real server in a subprocess, SIGKILLed mid-queue.

The queue is served by the test-only fake editor ("fake:<seconds per step>") so a job takes a
known time; everything else (CLI, uvicorn, SQLite, storage, recovery) is the real thing.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image

from stepedit.jobs.service import INTERRUPTED_MESSAGE, JobService
from stepedit.settings import Settings

pytestmark = pytest.mark.slow

STEPS = 5
STEP_DELAY = "fake:0.15"  # 0.75 s per job


def load_server_helpers() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "api" / "conftest.py"
    spec = importlib.util.spec_from_file_location("stepedit_test_servers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


servers = load_server_helpers()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(base_url: str, index: int) -> str:
    response = httpx.post(
        f"{base_url}/v1/jobs",
        files={"image": ("a.png", png(), "image/png")},
        data={"prompt": f"edit {index}", "num_inference_steps": str(STEPS), "seed": str(index)},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def get(base_url: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10).json()
    return job


def wait_until(predicate: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def kill_mid_run(data_dir: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """Start, queue four jobs, SIGKILL once the first is half-way; returns (running, waiting)."""
    server = servers.start_server(data_dir, model=STEP_DELAY, env=env)
    try:
        ids = [submit(server.base_url, i) for i in range(4)]
        wait_until(lambda: get(server.base_url, ids[0])["progress"]["step"] >= 2)
        assert get(server.base_url, ids[2])["status"] == "queued"
    finally:
        server.kill()
    return ids[0], ids[1:]


def finish_after_restart(
    data_dir: Path, env: dict[str, str], ids: list[str]
) -> list[dict[str, Any]]:
    server = servers.start_server(data_dir, model=STEP_DELAY, env=env)
    try:
        wait_until(
            lambda: all(
                get(server.base_url, job_id)["status"] in ("succeeded", "failed", "canceled")
                for job_id in ids
            )
        )
        return [get(server.base_url, job_id) for job_id in ids]
    finally:
        server.stop()


def attempts(data_dir: Path, job_id: str) -> int:
    service = JobService(Settings(data_dir=data_dir))
    try:
        return service.get_sync(job_id, None).attempt
    finally:
        service.close()


def test_interrupted_job_is_retried_and_queued_jobs_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    running, waiting = kill_mid_run(data_dir, {})
    jobs = finish_after_restart(data_dir, {}, [running, *waiting])
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert [job["outputs"][0]["seed"] for job in jobs] == [0, 1, 2, 3]
    assert attempts(data_dir, running) == 2
    assert attempts(data_dir, waiting[0]) == 1
    assert not list((data_dir / "inputs").iterdir())  # every upload deleted


def test_job_interrupted_past_its_attempts_fails_with_a_reason(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"STEPEDIT_MAX_ATTEMPTS": "1"}
    running, waiting = kill_mid_run(data_dir, env)
    interrupted, *others = finish_after_restart(data_dir, env, [running, *waiting])
    assert interrupted["status"] == "failed"
    assert interrupted["error"] == {"code": "interrupted", "message": INTERRUPTED_MESSAGE}
    assert [job["status"] for job in others] == ["succeeded"] * 3
