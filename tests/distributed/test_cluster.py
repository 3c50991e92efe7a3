"""The scale-out mode end to end: real redis-server, PostgreSQL, API node and worker processes.

Workers run the test-only fake editor ("fake:<seconds per step>") so a job takes a known time,
except in the tiny-model test; everything else (CLI, Celery, uvicorn, PostgreSQL) is real.
"""

from __future__ import annotations

import base64
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from stepedit.jobs.models import JobRecord
from stepedit.jobs.store import JobStore

from .conftest import Cluster, Node, PostgresCluster, RedisServer, WebhookReceiver, png, wait_until

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "canceled")


def submit(api: Node, index: int, webhook_url: str | None = None, **fields: Any) -> str:
    data = {"prompt": f"edit {index}", "num_inference_steps": "8", "seed": str(index), **fields}
    if webhook_url:
        data["webhook_url"] = webhook_url
    response = httpx.post(
        f"{api.base_url}/v1/jobs",
        files={"image": ("a.png", png(index), "image/png")},
        data={k: str(v) for k, v in data.items()},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def submit_wavespeed(api: Node, index: int, webhook_url: str) -> str:
    image = "data:image/png;base64," + base64.b64encode(png(index)).decode()
    response = httpx.post(
        f"{api.base_url}/api/v3/wavespeed-ai/step1x-edit",
        params={"webhook": webhook_url},
        json={"prompt": f"edit {index}", "image": image, "seed": index, "num_inference_steps": 8},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    job_id: str = response.json()["data"]["id"]
    return job_id


def job(api: Node, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api.base_url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_done(api: Node, ids: list[str], timeout_s: float = 60) -> list[dict[str, Any]]:
    wait_until(lambda: all(job(api, i)["status"] in TERMINAL for i in ids), timeout_s, "jobs")
    return [job(api, i) for i in ids]


def attempts(database_url: str) -> dict[str, int]:
    store = JobStore(database_url)
    try:
        with store.session() as session:
            rows = session.execute(select(JobRecord.id, JobRecord.attempt)).all()
            return {job_id: attempt for job_id, attempt in rows}
    finally:
        store.close()


def claimed_by(database_url: str, job_id: str) -> str:
    store = JobStore(database_url)
    try:
        with store.session() as session:
            record = session.get(JobRecord, job_id)
            assert record is not None and record.worker_id is not None
            return record.worker_id
    finally:
        store.close()


def test_worker_killed_mid_burst_every_job_completes_once(
    cluster: Cluster, webhook_receiver: WebhookReceiver
) -> None:
    api = cluster.api()
    victim, survivor = cluster.worker("fake:0.1"), cluster.worker("fake:0.1")
    cluster.wait_workers(api, 2)

    ids = [submit(api, i, webhook_receiver.url) for i in range(8)]
    ids += [submit_wavespeed(api, i, webhook_receiver.url) for i in range(8, 10)]

    def victim_is_mid_job() -> bool:
        workers = httpx.get(f"{api.base_url}/health", timeout=2).json()["workers"]
        return any(f"-{victim.process.pid}-" in w["id"] and w["busy"] for w in workers)

    wait_until(victim_is_mid_job, 30, "the victim to be running a job")
    time.sleep(0.3)
    victim.kill()

    jobs = wait_done(api, ids, timeout_s=90)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids)
    assert [[o["seed"] for o in j["outputs"]] for j in jobs] == [[i] for i in range(len(ids))]
    # One output set per job: the killed attempt stored nothing.
    assert len(list((cluster.shared_dir / "outputs").glob("*.png"))) == len(ids)
    assert any(count == 2 for count in attempts(cluster.database_url).values())

    wait_until(lambda: len(webhook_receiver.calls) >= len(ids), 30, "webhooks")
    time.sleep(1.5)  # a duplicate would arrive within a sweep or two
    assert webhook_receiver.by_job() == {job_id: 1 for job_id in ids}

    metrics = httpx.get(f"{api.base_url}/metrics", timeout=5).text
    assert "stepedit_queue_depth 0.0" in metrics
    assert "stepedit_worker_busy_ratio{" in metrics
    assert 'stepedit_workers{model_version="v1.1"} 1.0' in metrics
    assert survivor.process.poll() is None


def test_redis_outage_answers_503_and_recovers_without_restart(
    cluster: Cluster, redis: RedisServer
) -> None:
    api = cluster.api()
    cluster.worker("fake:0.05")
    cluster.wait_workers(api, 1)
    before = submit(api, 0)
    wait_done(api, [before])

    redis.stop()
    refused = httpx.post(
        f"{api.base_url}/v1/jobs",
        files={"image": ("a.png", png(), "image/png")},
        data={"prompt": "edit"},
        timeout=15,
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "service_unavailable"
    openai_style = httpx.post(
        f"{api.base_url}/v1/images/edits",
        files={"image": ("a.png", png(), "image/png")},
        data={"model": "step-1x-edit", "prompt": "edit"},
        timeout=15,
    )
    assert openai_style.status_code == 503
    assert openai_style.json()["error"]["type"] == "service_unavailable_error"
    assert httpx.get(f"{api.base_url}/health", timeout=15).status_code == 503
    assert job(api, before)["status"] == "succeeded"  # reads need only the database

    redis.start()
    cluster.wait_ready(api, timeout_s=30)
    after = submit(api, 1)
    assert wait_done(api, [after], timeout_s=90)[0]["status"] == "succeeded"


def test_postgres_outage_answers_503_and_recovers_without_restart(
    cluster: Cluster, postgres: PostgresCluster
) -> None:
    api = cluster.api()
    queued = submit(api, 0)  # no worker: stays queued
    postgres.stop()
    try:
        assert httpx.get(f"{api.base_url}/v1/jobs/{queued}", timeout=15).status_code == 503
        wavespeed = httpx.get(f"{api.base_url}/api/v3/predictions/{queued}/result", timeout=15)
        assert wavespeed.status_code == 503
        assert wavespeed.json()["code"] == 503
        assert httpx.get(f"{api.base_url}/health", timeout=15).status_code == 503
    finally:
        postgres.start()
    cluster.wait_ready(api, timeout_s=30)
    assert job(api, queued)["status"] == "queued"
    cluster.worker("fake:0.05")
    assert wait_done(api, [queued], timeout_s=60)[0]["status"] == "succeeded"


def test_jobs_route_by_model_version_and_time_out(cluster: Cluster) -> None:
    api = cluster.api()
    v11 = cluster.worker("fake:0.1")
    v12 = cluster.worker("fake:0.1", "--model-version", "v1.2", "--job-timeout", "1.5")
    cluster.wait_workers(api, 2)

    default = submit(api, 0, num_inference_steps=2)
    newer = submit(api, 1, num_inference_steps=2, model="v1.2")
    slow = submit(api, 2, num_inference_steps=40, model="step1x-edit-v1.2")
    done = wait_done(api, [default, newer, slow])
    assert [j["status"] for j in done] == ["succeeded", "succeeded", "failed"]
    assert f"-{v11.process.pid}-" in claimed_by(cluster.database_url, default)
    assert f"-{v12.process.pid}-" in claimed_by(cluster.database_url, newer)
    assert done[2]["error"]["code"] == "timeout"
    assert "1.5 s" in done[2]["error"]["message"]


def test_tiny_model_workers(cluster: Cluster) -> None:
    api = cluster.api()
    cluster.worker("dummy:tiny-v1.1", "--device", "cpu", "--threads", "1")
    cluster.wait_workers(api, 1, timeout_s=120)
    ids = [submit(api, i, num_inference_steps=1, size_level=512) for i in range(2)]
    jobs = wait_done(api, ids, timeout_s=120)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    image = httpx.get(jobs[0]["outputs"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_outputs_in_s3_compatible_storage(
    cluster: Cluster, tmp_path: Path, moto_s3: dict[str, str]
) -> None:
    import boto3

    env = {
        "STEPEDIT_STORAGE_URL": "s3://stepedit-test/outputs-prefix",
        "STEPEDIT_S3_ENDPOINT_URL": moto_s3["endpoint"],
        **moto_s3["credentials"],
    }
    # Separate disks: the API node and the worker share only the bucket.
    api = cluster.api(env=env, data_dir=tmp_path / "api-disk")
    cluster.worker("fake:0.05", env=env, data_dir=tmp_path / "worker-disk")
    cluster.wait_workers(api, 1)
    job_id = submit(api, 3, num_inference_steps=2)
    done = wait_done(api, [job_id])[0]
    assert done["status"] == "succeeded", done
    image = httpx.get(done["outputs"][0]["url"], timeout=10)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    s3 = boto3.client("s3", endpoint_url=moto_s3["endpoint"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="stepedit-test")["Contents"]]
    assert [k for k in keys if k.startswith("outputs-prefix/outputs/")]
    assert not [k for k in keys if k.startswith("outputs-prefix/inputs/")]  # deleted at the end


def test_api_node_killed_loses_no_accepted_job(cluster: Cluster, redis: RedisServer) -> None:
    first = cluster.api()
    ids = [submit(first, i, num_inference_steps=2) for i in range(4)]
    first.kill()
    # The worst case for dispatch: every message gone (as if the node died before sending).
    redis.stop()
    redis.start()
    second = cluster.api()
    cluster.worker("fake:0.05")
    jobs = wait_done(second, ids, timeout_s=60)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids)


def test_one_idempotency_key_makes_one_job_across_two_api_nodes(cluster: Cluster) -> None:
    """20 keys, each sent at the same moment to two API nodes: 20 jobs, each node answering
    with the same one (the database's unique (owner, key), not a per-process lock)."""
    nodes = [cluster.api(), cluster.api()]
    keys = [f"key-{i}" for i in range(20)]
    answers: dict[str, list[str]] = {key: [] for key in keys}
    barrier = threading.Barrier(2 * len(keys))

    def send(node: Node, key: str) -> None:
        barrier.wait(60)
        response = httpx.post(
            f"{node.base_url}/v1/jobs",
            files={"image": ("a.png", png(1), "image/png")},
            data={"prompt": "x"},
            headers={"Idempotency-Key": key},
            timeout=60,
        )
        assert response.status_code == 202, response.text
        answers[key].append(response.json()["id"])

    threads = [threading.Thread(target=send, args=(n, k)) for k in keys for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(len(ids) == 2 and len(set(ids)) == 1 for ids in answers.values()), answers
    assert len(attempts(cluster.database_url)) == len(keys)


def test_a_worker_stopped_mid_job_hands_it_back_uncounted(cluster: Cluster) -> None:
    """SIGTERM: the edit outlasts the grace, so the job goes back to the broker without
    counting an attempt (max_attempts=1 would fail it otherwise) and another worker runs it."""
    env = {"STEPEDIT_SHUTDOWN_GRACE_S": "0.5", "STEPEDIT_MAX_ATTEMPTS": "1"}
    api = cluster.api(env=env)
    stopping = cluster.worker("fake:0.3", env=env)
    cluster.wait_workers(api, 1)
    job_id = submit(api, 0, num_inference_steps=40)  # 12 s
    wait_until(lambda: job(api, job_id)["progress"]["step"] >= 1, 60, "the job to run")
    stopping.process.send_signal(signal.SIGTERM)
    assert stopping.process.wait(60) == 0, stopping.log()
    assert job(api, job_id)["status"] == "queued"
    cluster.worker("fake:0.01", env=env)
    (done,) = wait_done(api, [job_id], timeout_s=120)
    assert done["status"] == "succeeded", done
    assert attempts(cluster.database_url)[job_id] == 2
