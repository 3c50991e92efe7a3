"""Exactly-once on PostgreSQL, in-process: conditional claims, fencing, one webhook, sweeping.

Several fleet `JobService`s over one database stand in for several machines; no broker needed.
"""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import update

from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.dispatch import CeleryDispatcher, NoDispatcher, version_for
from stepedit.distributed.heartbeat import BusyClock, Heartbeat
from stepedit.distributed.schema import WorkerRecord
from stepedit.distributed.service import FleetHealth, fleet_service
from stepedit.distributed.sweeper import Sweeper
from stepedit.distributed.tasks import TimedEditor, WorkerRuntime, claim_job
from stepedit.engine.editor import FakeEditor
from stepedit.errors import InvalidInput, ServiceUnavailable
from stepedit.jobs.health import HealthStatus, LoadedLora, ModelHealth
from stepedit.jobs.models import JobRecord, utcnow
from stepedit.jobs.outbox import DeferredOutbox, WebhookOutbox
from stepedit.jobs.service import ClaimedJob, ClaimLost, JobService, ProducedImage
from stepedit.jobs.state import JobStatus
from stepedit.request import VERSIONS, EditRequest, LoraChoice

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


class RecordingDispatcher:
    """A broker stand-in: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.in_broker: set[str] = set()

    def check_available(self) -> None:
        pass

    def dispatch(self, job_id: str, request: EditRequest, flavour: str) -> None:
        self.sent.append(job_id)

    def wait_for_work(self, timeout_s: float) -> None:
        pass

    def version_for(self, request: EditRequest) -> str | None:
        return "v1.1"

    def job_ids_in_broker(self) -> set[str]:
        return self.in_broker


@pytest.fixture
def services(settings: DistributedSettings) -> Any:
    made: list[JobService] = []

    def make(role: str = "worker", dispatcher: Any = None) -> JobService:
        if role == "api" and dispatcher is None:
            dispatcher = RecordingDispatcher()
        service = fleet_service(settings, role=role, dispatcher=dispatcher)  # type: ignore[arg-type]
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def claim(service: JobService, job_id: str, worker_id: str) -> ClaimedJob | None:
    """What a worker does with a task for `job_id` (heartbeat timeout as in `settings`)."""
    return claim_job(service, job_id, worker_id, heartbeat_timeout_s=3)


def heartbeat(service: JobService, worker_id: str, age_s: float = 0.0) -> None:
    with service.store.session() as session:
        session.merge(
            WorkerRecord(
                id=worker_id, hostname="h", pid=1, model_version="v1.1", queue="stepedit.v1.1",
                device="cpu", started_at=utcnow(), last_seen=utcnow() - timedelta(seconds=age_s),
                current_job=None, busy_ratio=0.0, jobs_done=0,
            )
        )  # fmt: skip


def die(service: JobService, worker_id: str) -> None:
    """The worker stopped heartbeating long ago (killed), and its claim is as old."""
    heartbeat(service, worker_id, age_s=60)
    with service.store.session() as session:
        session.execute(
            update(JobRecord)
            .where(JobRecord.worker_id == worker_id)
            .values(started_at=utcnow() - timedelta(seconds=60))
        )


def submit(api: JobService, webhook_url: str | None = None) -> str:
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

    def race(index: int) -> None:
        barrier.wait()
        results.append(claim(workers[index], job_id, f"w{index}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(workers))]
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
    assert claim(first, job_id, "w1") is not None
    assert claim(second, job_id, "w2") is None  # w1 is alive: a duplicate message, dropped

    die(first, "w1")
    taken = claim(second, job_id, "w2")
    assert taken is not None and taken.attempt == 2

    # The first worker wakes up: its progress is refused and its result cannot land.
    assert first.report_progress(job_id, 1, 2, "denoise") is True
    with pytest.raises(ClaimLost):
        first.complete(job_id, output(1), prompt_used="x", passes=["edit"], inference_ms=1.0)
    with pytest.raises(ClaimLost):
        first.fail(job_id, "internal_error", "late")
    view = second.complete(job_id, output(), prompt_used="x", passes=["edit"], inference_ms=1.0)
    assert view.status == JobStatus.SUCCEEDED
    assert [o.seed for o in api.get_sync(job_id, None).outputs] == [7]
    assert view.attempt == 2


def test_a_mask_travels_with_its_job_to_the_worker_that_takes_it_over(
    services: Any, settings: DistributedSettings
) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    api, first, second = services("api"), services(), services()
    request = EditRequest(prompt="paint the left half", num_inference_steps=2, seed=7)
    job_id = api.submit_sync(
        request, png(), mask=buffer.getvalue(), owner=None, flavour="native"
    ).id
    heartbeat(first, "w1")
    taken = claim(first, job_id, "w1")
    assert taken is not None and taken.mask_path is not None
    die(first, "w1")

    editor = FakeEditor()
    runtime = WorkerRuntime(second, TimedEditor(editor, 60), "w2", BusyClock(), 3)
    assert runtime.run(job_id) == "done"
    (sent,) = editor.masks
    assert sent is not None and sent.tobytes() == mask.tobytes()
    view = api.get_sync(job_id, None)
    assert view.status == JobStatus.SUCCEEDED and view.attempt == 2
    (region,) = view.region_masks
    with Image.open(api.output_path(region.token)) as kept:
        assert kept.tobytes() == mask.tobytes()
    assert list((settings.data_dir / "inputs").iterdir()) == []


def test_api_nodes_know_the_adapters_their_live_workers_loaded(services: Any) -> None:
    api = services("api")
    assert api.loaded_loras() is None  # no live worker: unknown (a worker checks the name)
    hands = LoadedLora("hands", "official", rank=4, targets=12, default_scale=0.8, merged=True)
    beat = Heartbeat(
        api.store, worker_id="w1", model_version="v1.1", queue="stepedit.v1.1", device="cpu",
        interval_s=60, clock=BusyClock(), loras=[hands],
    )  # fmt: skip
    beat.beat()
    assert api.loaded_loras() == (hands,)
    api.check_loras(EditRequest(prompt="x", loras=(LoraChoice("hands", 0.5),)))
    with pytest.raises(InvalidInput, match="'nope' not loaded"):
        api.check_loras(EditRequest(prompt="x", loras=(LoraChoice("nope", 1.0),)))


def test_a_job_whose_worker_dies_every_time_fails_with_a_reason(services: Any) -> None:
    api, worker = services("api"), services()
    job_id = submit(api)
    for attempt in range(api.settings.max_attempts):
        claimed = claim(worker, job_id, f"dead{attempt}")
        assert claimed is not None
        die(worker, f"dead{attempt}")
    assert claim(worker, job_id, "late") is None
    view = api.get_sync(job_id, None)
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.code == "worker_lost"


def test_webhook_fires_once_however_many_api_nodes_sweep(
    services: Any, webhook_receiver: WebhookReceiver
) -> None:
    nodes = [services("api") for _ in range(3)]
    worker = services()
    job_id = submit(nodes[0], webhook_receiver.url)
    assert claim(worker, job_id, "w1") is not None
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
    assert webhook_receiver.calls[0]["verified"]


def test_sweeps_do_not_resend_a_webhook_before_it_is_due(
    settings: DistributedSettings, services: Any, webhook_receiver: WebhookReceiver
) -> None:
    """A failed delivery waits for its retry time: three API nodes sweeping ten times each
    send it once, and the failure is on the job."""
    nodes = [
        fleet_service(
            settings.model_copy(update={"webhook_backoff_s": 3600.0}),
            role="api",
            dispatcher=RecordingDispatcher(),
        )
        for _ in range(3)
    ]
    worker = services()
    webhook_receiver.statuses = [500]
    try:
        job_id = submit(nodes[0], webhook_receiver.url)
        assert claim(worker, job_id, "w1") is not None
        worker.complete(job_id, output(), prompt_used="x", passes=["edit"], inference_ms=1.0)
        nodes[0].deliver_pending_webhooks()
        wait_until(
            lambda: (nodes[1].get_sync(job_id, None).webhook or _NONE).attempts == 1, 20, "1 try"
        )
        for _ in range(10):
            for node in nodes:
                Sweeper(node, RecordingDispatcher(), settings).sweep()
        threading.Event().wait(1.0)  # sweeps every 2 s used to send it again each time
        assert webhook_receiver.by_job() == {job_id: 1}
        webhook = nodes[2].get_sync(job_id, None).webhook
        assert webhook is not None and (webhook.state, webhook.last_status) == ("pending", 500)
    finally:
        for node in nodes:
            node.close()


_NONE = type("NoWebhook", (), {"attempts": 0})()


def test_a_wait_on_an_api_node_is_woken_by_a_workers_commit(
    settings: DistributedSettings, services: Any
) -> None:
    """The API node learns of the worker's commit through PostgreSQL NOTIFY, not by polling
    (it would re-read only every 600 s here)."""
    api = fleet_service(
        settings.model_copy(update={"wait_recheck_s": 600.0}),
        role="api",
        dispatcher=RecordingDispatcher(),
    )
    worker = services()
    try:
        job_id = submit(api)

        async def wait_for_the_worker() -> JobStatus:
            waiting = asyncio.ensure_future(api.wait(job_id, None, 600))
            while api.job_events.waiters == 0:
                await asyncio.sleep(0.01)
            assert api._listener is not None
            await asyncio.to_thread(api._listener.listening.wait, 30)
            assert claim(worker, job_id, "w1") is not None
            worker.complete(job_id, output(), prompt_used="x", passes=["edit"], inference_ms=1.0)
            view = await asyncio.wait_for(waiting, 60)  # a guard, far below the 600 s re-read
            return view.status

        assert asyncio.run(wait_for_the_worker()) is JobStatus.SUCCEEDED
    finally:
        api.close()


def api_state(service: JobService, job_id: str) -> str | None:
    with service.store.session() as session:
        record = session.get(JobRecord, job_id)
        return record.webhook_state if record else None


def test_sweeper_requeues_a_dead_workers_job_and_resends_lost_dispatches(
    settings: DistributedSettings, services: Any
) -> None:
    dispatcher = RecordingDispatcher()
    api = services("api", dispatcher)
    worker = services()
    running, lost, waiting = submit(api), submit(api), submit(api)
    assert dispatcher.sent == [running, lost, waiting]
    assert claim(worker, running, "w1") is not None
    die(worker, "w1")
    dispatcher.sent.clear()
    dispatcher.in_broker = {waiting}
    with api.store.session() as session:  # both queued jobs are past the grace period
        session.execute(
            update(JobRecord)
            .where(JobRecord.id.in_([lost, waiting]))
            .values(queued_at=utcnow() - timedelta(hours=1))
        )
    Sweeper(api, dispatcher, settings).sweep()
    assert dispatcher.sent == [running, lost]  # the re-queue dispatched itself
    assert api.get_sync(running, None).status == JobStatus.QUEUED
    assert claim(worker, running, "w2") is not None  # the re-queued job runs again


def test_job_timeout_fails_the_job_with_a_clear_reason(services: Any) -> None:
    api, worker = services("api"), services()
    job_id = api.submit_sync(
        EditRequest(prompt="slow", num_inference_steps=50, seed=1),
        png(),
        owner=None,
        flavour="native",
    ).id
    runtime = WorkerRuntime(worker, TimedEditor(FakeEditor(0.05), 0.3), "w1", BusyClock(), 3)
    assert runtime.run(job_id) == "done"
    view = api.get_sync(job_id, None)
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.code == "timeout"
    assert "0.3 s" in view.error.message


def test_the_fleet_service_is_the_job_service_built_with_fleet_parts(
    settings: DistributedSettings, services: Any
) -> None:
    api = fleet_service(
        settings.model_copy(update={"queue_url": "redis://127.0.0.1:1/0"}), role="api"
    )
    worker = services()
    try:
        assert type(api) is JobService and type(worker) is JobService
        assert api.store.url.startswith("postgresql")
        assert isinstance(api.dispatcher, CeleryDispatcher)
        assert isinstance(api.outbox, WebhookOutbox) and isinstance(api.health_check, FleetHealth)
        assert isinstance(worker.dispatcher, NoDispatcher)
        assert isinstance(worker.outbox, DeferredOutbox)
        assert isinstance(worker.health_check, ModelHealth)
    finally:
        api.close()


def test_api_node_health_is_unavailable_while_the_broker_is_down(services: Any) -> None:
    class DownBroker(RecordingDispatcher):
        def check_available(self) -> None:
            raise ServiceUnavailable("the job queue is unavailable; retry shortly")

    healthy, broken = services("api"), services("api", DownBroker())
    heartbeat(healthy, "w1")
    ready = healthy.health()
    assert ready.status is HealthStatus.READY and [w["id"] for w in ready.details["workers"]] == [
        "w1"
    ]
    down = broken.health()
    assert down.status is HealthStatus.UNAVAILABLE
    assert down.details["broker"] == "down" and "queue" in (down.reason or "")


class RoutingDispatcher(RecordingDispatcher):
    def version_for(self, request: EditRequest) -> str | None:
        return version_for(request, "v1.1")


def test_requests_are_checked_against_the_version_they_route_to(services: Any) -> None:
    api = services("api", RoutingDispatcher())
    assert api.version_spec(EditRequest(prompt="p")) == VERSIONS["v1.1"]
    assert api.version_spec(EditRequest(prompt="p", model="v1.2")) == VERSIONS["v1.2"]
    assert api.version_spec(EditRequest(prompt="p", enable_thinking=True)) == VERSIONS["v1.2"]
