"""Exactly-once on PostgreSQL, in-process: conditional claims, fencing, one webhook, sweeping.

Several `SharedJobService`s over one database stand in for several machines; no broker needed.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.heartbeat import BusyClock
from stepedit.distributed.schema import ClaimRecord, WorkerRecord
from stepedit.distributed.service import ClaimLost, SharedJobService
from stepedit.distributed.sweeper import Sweeper
from stepedit.distributed.tasks import TimedEditor, WorkerRuntime
from stepedit.engine.editor import FakeEditor
from stepedit.jobs.models import utcnow
from stepedit.jobs.service import ProducedImage
from stepedit.jobs.state import JobStatus
from stepedit.request import EditRequest

from .conftest import WEBHOOK_SECRET, WebhookReceiver, png, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> DistributedSettings:
    return DistributedSettings(
        database_url=database_url,
        data_dir=tmp_path / "shared",
        webhook_secret=WEBHOOK_SECRET,
        webhook_backoff_s=0.05,
        allow_private_urls=True,
        safety_checker=False,
        heartbeat_timeout_s=3,
        public_base_url="http://testserver",
    )


@pytest.fixture
def services(settings: DistributedSettings) -> Any:
    made: list[SharedJobService] = []

    def make(role: str = "worker") -> SharedJobService:
        service = SharedJobService(settings, role=role)  # type: ignore[arg-type]
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def heartbeat(service: SharedJobService, worker_id: str, age_s: float = 0.0) -> None:
    with service.store.session() as session:
        session.merge(
            WorkerRecord(
                id=worker_id, hostname="h", pid=1, model_version="v1.1", queue="stepedit.v1.1",
                device="cpu", started_at=utcnow(), last_seen=utcnow() - timedelta(seconds=age_s),
                current_job=None, busy_ratio=0.0, jobs_done=0,
            )
        )  # fmt: skip


def die(service: SharedJobService, worker_id: str) -> None:
    """The worker stopped heartbeating long ago (killed), and its claim is as old."""
    heartbeat(service, worker_id, age_s=60)
    with service.store.session() as session:
        session.execute(
            update(ClaimRecord)
            .where(ClaimRecord.worker_id == worker_id)
            .values(claimed_at=utcnow() - timedelta(seconds=60))
        )


def submit(api: SharedJobService, webhook_url: str | None = None) -> str:
    view = api.submit_sync(
        EditRequest(prompt="make it blue", num_inference_steps=2, seed=7),
        png(),
        owner=None,
        flavour="native",
        webhook_url=webhook_url,
    )
    return view.id


def output(seed: int = 7) -> list[ProducedImage]:
    return [ProducedImage(png(seed), seed, False, "png", 64, 64)]


def test_concurrent_claims_of_one_job_give_it_to_one_worker(services: Any) -> None:
    api = services("api")
    workers = [services() for _ in range(4)]
    job_id = submit(api)
    results: list[Any] = []
    barrier = threading.Barrier(len(workers))

    def claim(index: int) -> None:
        barrier.wait()
        results.append(workers[index].claim(job_id, f"w{index}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [r for r in results if r is not None]
    assert len(claimed) == 1
    assert claimed[0].attempt == 1
    assert api.get_sync(job_id, None).status == JobStatus.PROCESSING


def test_redelivered_job_is_taken_over_only_from_a_dead_worker(services: Any) -> None:
    api, first, second = services("api"), services(), services()
    job_id = submit(api)
    heartbeat(first, "w1")
    assert first.claim(job_id, "w1") is not None
    assert second.claim(job_id, "w2") is None  # w1 is alive: a duplicate message, dropped

    die(first, "w1")
    taken = second.claim(job_id, "w2")
    assert taken is not None and taken.attempt == 2

    # The first worker wakes up: its progress is refused and its result cannot land.
    assert first.report_progress(job_id, 1, 2, "denoise") is True
    with pytest.raises(ClaimLost):
        first.complete(job_id, output(1), prompt_used="x", passes=["edit"], inference_ms=1.0)
    view = second.complete(job_id, output(), prompt_used="x", passes=["edit"], inference_ms=1.0)
    assert view.status == JobStatus.SUCCEEDED
    assert [o.seed for o in api.get_sync(job_id, None).outputs] == [7]
    assert view.attempt == 2


def test_a_job_whose_worker_dies_every_time_fails_with_a_reason(services: Any) -> None:
    api, worker = services("api"), services()
    job_id = submit(api)
    for attempt in range(api.settings.max_attempts):
        claimed = worker.claim(job_id, f"dead{attempt}")
        assert claimed is not None
        worker.release(job_id)
        die(worker, f"dead{attempt}")
    assert worker.claim(job_id, "late") is None
    view = api.get_sync(job_id, None)
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.code == "worker_lost"


def test_webhook_fires_once_however_many_api_nodes_sweep(
    services: Any, webhook_receiver: WebhookReceiver
) -> None:
    nodes = [services("api") for _ in range(3)]
    worker = services()
    job_id = submit(nodes[0], webhook_receiver.url)
    assert worker.claim(job_id, "w1") is not None
    worker.complete(job_id, output(), prompt_used="x", passes=["edit"], inference_ms=1.0)
    assert webhook_receiver.calls == []  # workers record; API nodes deliver
    threads = [threading.Thread(target=n.deliver_pending_webhooks) for n in nodes * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: len(webhook_receiver.calls) >= 1, 10, "the webhook")
    wait_until(lambda: api_state(nodes[0], job_id) == "delivered", 10, "delivered state")
    assert webhook_receiver.by_job() == {job_id: 1}
    assert webhook_receiver.calls[0]["body"]["status"] == "succeeded"


def api_state(service: SharedJobService, job_id: str) -> str | None:
    from stepedit.jobs.models import JobRecord

    with service.store.session() as session:
        record = session.get(JobRecord, job_id)
        return record.webhook_state if record else None


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.in_broker: set[str] = set()

    def check_available(self) -> None:
        pass

    def dispatch(self, job_id: str, request: EditRequest, flavour: str) -> None:
        self.sent.append(job_id)

    def job_ids_in_broker(self) -> set[str]:
        return self.in_broker


def test_sweeper_requeues_a_dead_workers_job_and_resends_lost_dispatches(
    settings: DistributedSettings, services: Any
) -> None:
    dispatcher = RecordingDispatcher()
    api = SharedJobService(settings, role="api", dispatcher=dispatcher)
    try:
        worker = services()
        running, lost, waiting = submit(api), submit(api), submit(api)
        assert dispatcher.sent == [running, lost, waiting]
        assert worker.claim(running, "w1") is not None
        die(worker, "w1")
        dispatcher.sent.clear()
        dispatcher.in_broker = {waiting}
        with api.store.session() as session:  # both queued jobs are past the grace period
            from stepedit.jobs.models import JobRecord

            session.execute(
                update(JobRecord)
                .where(JobRecord.id.in_([lost, waiting]))
                .values(queued_at=utcnow() - timedelta(hours=1))
            )
        sweeper = Sweeper(api, dispatcher)  # type: ignore[arg-type]
        sweeper.sweep()
        assert dispatcher.sent == [running, lost]
        assert api.get_sync(running, None).status == JobStatus.QUEUED
        assert worker.claim(running, "w2") is not None  # the re-queued job runs again
    finally:
        api.close()


def test_job_timeout_fails_the_job_with_a_clear_reason(services: Any) -> None:
    api, worker = services("api"), services()
    job_id = api.submit_sync(
        EditRequest(prompt="slow", num_inference_steps=50, seed=1),
        png(),
        owner=None,
        flavour="native",
    ).id
    runtime = WorkerRuntime(worker, TimedEditor(FakeEditor(0.05), 0.3), "w1", BusyClock())
    assert runtime.run(job_id) == "done"
    view = api.get_sync(job_id, None)
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.code == "timeout"
    assert "0.3 s" in view.error.message
