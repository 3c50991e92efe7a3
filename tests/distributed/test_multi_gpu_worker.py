"""`stepedit worker --gpus 0,1` in a fleet (real redis-server, PostgreSQL, API node), on the
CPU (`--device-type cpu`): one worker process per device (replicas), or one worker whose jobs
run across a leader and a follower process (cfg)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Cluster, Node, wait_until
from .test_cluster import attempts, submit, wait_done

pytestmark = pytest.mark.slow

CPU_PAIR = ("--gpus", "0,1", "--device-type", "cpu")


def workers(api: Node) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = httpx.get(f"{api.base_url}/health", timeout=5).json()["workers"]
    return listed


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_replicas_start_a_worker_per_device_and_stop_together(cluster: Cluster) -> None:
    api = cluster.api()
    supervisor = cluster.worker("fake:0.1", *CPU_PAIR)
    listed = cluster.wait_workers(api, 2)
    assert sorted(w["device"] for w in listed) == ["cpu:0", "cpu:1"]
    ids = [submit(api, i) for i in range(8)]  # 8 steps of 0.1 s each
    jobs = wait_done(api, ids, timeout_s=120)
    assert [j["status"] for j in jobs] == ["succeeded"] * 8
    assert set(attempts(cluster.database_url).values()) == {1}  # none ran twice
    done = [w["jobs_done"] for w in workers(api)]
    assert sum(done) == 8 and min(done) > 0, done  # both took jobs
    processes = [p for p in children_of(supervisor.process.pid) if p != supervisor.process.pid]
    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.process.wait(60) == 0, supervisor.log()
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in processes), 30, "children")


def test_cfg_runs_each_job_across_a_leader_and_a_follower(cluster: Cluster) -> None:
    api = cluster.api()
    worker = cluster.worker("dummy:tiny-v1.1", *CPU_PAIR, "--parallel", "cfg", "--threads", "1")
    (listed,) = cluster.wait_workers(api, 1, timeout_s=300)
    assert listed["device"] == "cfg cpu:0+cpu:1"
    ids = [submit(api, 0, num_inference_steps=2, size_level=512)]
    (finished,) = wait_done(api, ids, timeout_s=300)
    assert finished["status"] == "succeeded", finished
    log = worker.log()
    assert "positive half on cpu:0 (leader)" in log and "[cpu:1 follower]" in log
    # SIGTERM: the worker stops its follower and exits (it once waited on the follower forever).
    processes = children_of(worker.process.pid)  # the follower (and multiprocessing's helper)
    assert processes
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 0, worker.log()
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in processes), 30, "children")
