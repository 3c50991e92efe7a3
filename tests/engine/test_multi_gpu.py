"""`stepedit serve --gpus 0,1` end to end, on the CPU (`--device-type cpu`, gloo): the real
server, real worker and follower processes, the tiny random model or the fake editor.

- replicas: jobs run on both workers side by side, each job once; SIGTERM ends every process;
- cfg: an edit equals the single-process edit (within one level of 255, the float rounding of a
  batch of 1 against a batch of 2; the DiT itself agrees to 1e-4, tests/acceleration), and the
  follower ran half the DiT calls; SIGTERM ends the follower with the server;
- a follower killed during an edit: the leader finishes it (and later ones) alone, /health
  says so; nothing hangs.

The waits are guards against a hang, never measures: the machine is a busy 2-core box.
"""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from stepedit.engine.multi_gpu import MultiGpuWorkers
from stepedit.gpus import GpuPlan
from stepedit.jobs.health import HealthStatus
from stepedit.jobs.service import JobService
from stepedit.request import EditRequest
from stepedit.settings import Settings

from e2e.e2e_support import LiveServer, start_server, wait_until  # isort: skip

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "canceled")
CPU_PAIR = ["--gpus", "0,1", "--device-type", "cpu", "--no-safety-checker"]
TINY = "dummy:tiny-v1.1"
LOAD_S = 300.0  # two tiny models loading side by side on a busy machine


def source_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 60, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(server: LiveServer, **fields: Any) -> str:
    data = {"prompt": "make it red", "seed": "5", "num_inference_steps": "3", **fields}
    response = httpx.post(
        f"{server.base_url}/v1/jobs",
        files={"image": ("a.png", source_png(), "image/png")},
        data={k: str(v) for k, v in data.items()},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def job(server: LiveServer, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/v1/jobs/{job_id}", timeout=30).json()
    return body


def wait_done(server: LiveServer, ids: list[str], timeout_s: float = 300) -> list[dict[str, Any]]:
    wait_until(lambda: all(job(server, i)["status"] in TERMINAL for i in ids), timeout_s, "jobs")
    return [job(server, i) for i in ids]


def parallel(server: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health", timeout=30).json()["parallel"]
    return body


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
    except (OSError, IndexError):
        return "zombie"


def attempts(server: LiveServer, ids: list[str]) -> list[int]:
    """Each job's attempt, read from the stopped server's database."""
    service = JobService(Settings(data_dir=server.data_dir))
    try:
        return [service.get_sync(job_id, None).attempt for job_id in ids]
    finally:
        service.close()


def terminate(server: LiveServer) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(120)


# ------------------------------------------------------------------------------- replicas


def test_replicas_run_jobs_side_by_side_each_once(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", *CPU_PAIR, model="fake:0.1")
    try:
        health = parallel(server)
        assert health["mode"] == "replicas" and health["devices"] == ["cpu:0", "cpu:1"]
        children = [w["pid"] for w in health["workers"]]
        assert len(set(children)) == 2 and os.getpid() not in children
        ids = [submit(server, num_inference_steps=10, seed=i) for i in range(8)]
        jobs = wait_done(server, ids)
        assert [j["status"] for j in jobs] == ["succeeded"] * 8
        assert [j["outputs"][0]["seed"] for j in jobs] == list(range(8))
        edits = [w["edits"] for w in parallel(server)["workers"]]
        assert sum(edits) == 8 and min(edits) > 0, edits  # both ran jobs; none ran twice
        assert "parallel replicas: one pipeline per device on cpu:0, cpu:1" in server.log()
        assert terminate(server) in (0, -signal.SIGTERM), server.log()
        wait_until(lambda: not any(map(is_running, children)), 60, "the worker processes")
        assert attempts(server, ids) == [1] * 8
    finally:
        server.stop()


def test_the_servers_health_is_its_workers_combined(tmp_path: Path) -> None:
    settings = Settings(model="fake", data_dir=tmp_path / "data")
    service = JobService(settings)
    try:
        workers = MultiGpuWorkers(service, settings, GpuPlan("replicas", (0, 1), "cpu"))
        first, second = (slot.health for slot in workers.slots)
        first.loaded("v1.1")
        assert service.health().status is HealthStatus.LOADING  # one of two is not enough
        second.loaded("v1.1")
        assert service.health().is_ready and service.model_version == "v1.1"
        second.failed("RuntimeError: CUDA error")
        health = service.health()
        assert health.status is HealthStatus.FAILED
        assert health.reason == "cpu:1: RuntimeError: CUDA error"
        listed = [(w["device"], w["status"]) for w in health.to_dict()["parallel"]["workers"]]
        assert listed == [("cpu:0", "ok"), ("cpu:1", "failed")]
    finally:
        service.close()


# ------------------------------------------------------------------------------- cfg


def single_process_edit() -> np.ndarray:
    from stepedit.engine import load_editor

    editor = load_editor(Settings(model=TINY, device="cpu"))
    source = Image.open(io.BytesIO(source_png())).convert("RGB")
    request = EditRequest(prompt="make it red", seed=5, num_inference_steps=3, size_level=512)
    result = editor.edit(request, source, lambda *step: None)
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def output_pixels(server: LiveServer, finished: dict[str, Any]) -> np.ndarray:
    data = httpx.get(finished["outputs"][0]["url"], timeout=30).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_cfg_pair_edits_like_one_process_and_stops_with_the_server(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "data", *CPU_PAIR, "--parallel", "cfg", model=TINY, ready_timeout_s=LOAD_S
    )
    try:
        (finished,) = wait_done(server, [submit(server, size_level=512)])
        assert finished["status"] == "succeeded", finished
        difference = np.abs(output_pixels(server, finished) - single_process_edit())
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
        health = parallel(server)
        assert health["mode"] == "cfg" and health["devices"] == ["cpu:0", "cpu:1"]
        (pair,) = health["workers"]
        assert pair["follower"] == "ok" and pair["edits"] == 1
        assert pair["dit_calls"] == {"split": 3, "leader_only": 0}  # the follower ran its half
        follower = pair["follower_pid"]
        assert is_running(follower)
        assert "each edit's positive half on cpu:0 (leader)" in server.log()
        assert terminate(server) in (0, -signal.SIGTERM), server.log()
        wait_until(lambda: not is_running(follower), 60, "the follower to exit")
    finally:
        server.stop()


def test_a_follower_killed_mid_edit_leaves_the_edit_to_the_leader(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "data", *CPU_PAIR, "--parallel", "cfg", model=TINY, ready_timeout_s=LOAD_S
    )
    try:
        long_edit = submit(server, num_inference_steps=8, size_level=512)
        wait_until(lambda: job(server, long_edit)["progress"]["step"] >= 2, LOAD_S, "step 2")
        os.kill(parallel(server)["workers"][0]["follower_pid"], signal.SIGKILL)
        later = submit(server, size_level=512)
        jobs = wait_done(server, [long_edit, later])
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
        (pair,) = parallel(server)["workers"]
        assert pair["follower"].startswith("lost: ") and pair["status"] == "ok"
        assert pair["dit_calls"]["leader_only"] >= 3  # at least the later edit's
        assert "the leader runs both halves of every edit from now on" in server.log()
    finally:
        server.stop()
