"""Issue 12 on the job service, against real SQLite (and PostgreSQL where it runs): pushed
waits, cancel at claim time, idempotency across nodes, charges as the passes run, retention,
orphans, deterministic output names, handed-back attempts."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import event, update

from stepedit.engine import FakeEditor, InProcessWorker
from stepedit.errors import QuotaExceeded, ServiceUnavailable
from stepedit.jobs.models import JobRecord, utcnow
from stepedit.jobs.service import JobService, ProducedImage
from stepedit.jobs.state import JobStatus
from stepedit.jobs.storage import output_token
from stepedit.request import EditRequest
from stepedit.settings import Settings

from .receivers import wait_until


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_service(tmp_path: Path, database_url: str, **overrides: Any) -> JobService:
    service = JobService(
        Settings(data_dir=tmp_path / "data", database_url=database_url, **overrides)
    )
    service.recover()
    return service


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[JobService]:
    service = make_service(tmp_path, database_url)
    yield service
    service.close()


def submit(service: JobService, owner: str | None = None, **fields: Any) -> str:
    request = EditRequest(prompt="add a hat", **fields)
    return service.submit_sync(request, png(), owner=owner, flavour="native").id


def produce(service: JobService, job_id: str, count: int = 1) -> list[ProducedImage]:
    return [ProducedImage(png(), i, False, "png", 32, 32) for i in range(count)]


class StatementCounter:
    def __init__(self, service: JobService) -> None:
        self.count = 0
        self._lock = threading.Lock()
        event.listen(service.store.engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        with self._lock:
            self.count += 1

    def wait_until_quiet(self, quiet_s: float = 0.3) -> None:
        last = -1
        while self.count != last:
            last = self.count
            threading.Event().wait(quiet_s)


# ------------------------------------------------------------------ pushed waits


def test_synchronous_waits_are_woken_by_the_job_not_polled(service: JobService) -> None:
    """200 waiters cost no database reads while they wait (progress included); each reads
    once more when the job ends."""
    job_id = submit(service, num_inference_steps=28)
    assert service.claim_next(0) is not None
    counter = StatementCounter(service)
    loop = asyncio.new_event_loop()
    results: list[Any] = []

    async def wait_all() -> None:
        results.extend(await asyncio.gather(*(service.wait(job_id, None, 120) for _ in range(200))))

    waiting = threading.Thread(target=loop.run_until_complete, args=(wait_all(),))
    waiting.start()
    try:
        wait_until(lambda: service.job_events.waiters == 200, what="200 waiters")
        counter.wait_until_quiet()  # each waiter's first read is done
        before = counter.count
        for step in range(1, 29):  # progress wakes event streams, not waiters
            service.report_progress(job_id, step, 28, "denoise")
        threading.Event().wait(1.0)  # a polling wait (every 0.1 s) would read 2000 times here
        assert counter.count - before <= 28 * 4  # the progress writes themselves
        service.complete(
            job_id, produce(service, job_id), prompt_used="x", passes=[], inference_ms=1
        )
        waiting.join(60)
        assert not waiting.is_alive()
    finally:
        if waiting.is_alive():
            service.begin_shutdown()
            waiting.join(60)
        loop.close()
    assert [view.status for view in results] == [JobStatus.SUCCEEDED] * 200
    assert service.job_events.waiters == 0


def test_a_wait_ends_at_once_when_the_server_shuts_down(service: JobService) -> None:
    job_id = submit(service)

    async def wait_then_shut_down() -> ServiceUnavailable:
        waiter = asyncio.ensure_future(service.wait(job_id, None, 600))
        while service.job_events.waiters == 0:
            await asyncio.sleep(0.01)
        service.begin_shutdown()
        with pytest.raises(ServiceUnavailable) as raised:
            await asyncio.wait_for(waiter, 30)  # a guard: it ends as soon as it is woken
        return raised.value

    error = asyncio.run(wait_then_shut_down())
    assert job_id in error.message and error.retry_after_s
    assert service.get_sync(job_id, None).status is JobStatus.QUEUED  # kept for the restart
    with pytest.raises(ServiceUnavailable):
        submit(service)


# ------------------------------------------------------------------ cancel at claim time


def test_cancel_as_the_worker_claims_always_ends_canceled(service: JobService) -> None:
    """25 cancels timed around the in-process worker's claim: each job ends canceled (or, if
    the edit finished first, succeeded), never failed."""
    gate = threading.Event()

    class GatedEditor(FakeEditor):
        def edit(self, request: EditRequest, image: Any, on_progress: Any, mask: Any = None) -> Any:
            gate.wait(30)
            return super().edit(request, image, on_progress, mask)

    worker = InProcessWorker(service, GatedEditor, poll_s=0.01)
    worker.start()
    wait_until(lambda: service.is_ready)
    outcomes = []
    try:
        for attempt in range(25):
            gate.clear()
            job_id = submit(service, num_inference_steps=2)
            if attempt % 2:  # half of them: cancel once the worker has it
                wait_until(lambda: service.get_sync(job_id, None).status is JobStatus.PROCESSING)  # noqa: B023
            service.cancel_sync(job_id, None)
            gate.set()
            wait_until(lambda: service.get_sync(job_id, None).is_terminal)  # noqa: B023
            view = service.get_sync(job_id, None)
            outcomes.append((view.status, view.error.code if view.error else None))
    finally:
        gate.set()
        worker.stop()
    assert set(outcomes) == {(JobStatus.CANCELED, "canceled")}


def test_a_cancel_after_the_last_step_wins_over_the_result(service: JobService) -> None:
    """The client was told "canceled at the next step"; with no next step, the result is
    discarded rather than recorded."""
    job_id = submit(service, num_inference_steps=2)
    assert service.claim_next(0) is not None
    service.report_progress(job_id, 2, 2, "denoise")
    assert service.cancel_sync(job_id, None).status is JobStatus.PROCESSING
    view = service.complete(
        job_id, produce(service, job_id), prompt_used="x", passes=[], inference_ms=1
    )
    assert view.status is JobStatus.CANCELED and view.outputs == ()
    assert list((service.settings.data_dir / "outputs").iterdir()) == []


# ------------------------------------------------------------------ idempotency across nodes


def test_one_idempotency_key_makes_one_job_across_api_nodes(
    tmp_path: Path, database_url: str
) -> None:
    """Two services over one database stand for two API nodes; 20 keys, each sent to both at
    the same moment."""
    nodes = [make_service(tmp_path, database_url, max_queue=100) for _ in range(2)]
    barrier = threading.Barrier(2 * 20)
    answers: dict[str, list[str]] = {f"key-{i}": [] for i in range(20)}
    errors: list[BaseException] = []

    def send(node: JobService, key: str) -> None:
        barrier.wait(30)
        try:
            view = node.submit_sync(
                EditRequest(prompt="x"), png(), owner="alice", flavour="native", idempotency_key=key
            )
            answers[key].append(view.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(node, key)) for key in answers for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert all(len(set(ids)) == 1 and len(ids) == 2 for ids in answers.values()), answers
    assert len(nodes[0].list_sync("alice", limit=100)) == 20
    assert len(list((tmp_path / "data" / "inputs").iterdir())) == 20  # no stray upload
    for node in nodes:
        node.close()


# ------------------------------------------------------------------ charges


def test_a_reasoning_edit_with_the_default_passes_is_charged_the_reasoning_rate(
    tmp_path: Path, database_url: str
) -> None:
    service = make_service(tmp_path, database_url, model_version="v1.2", daily_token_quota=3000)
    assert service.get_sync(submit(service, owner="a"), "a").tokens == 2000  # seed 004: ~2000
    no_passes = submit(service, owner="b", enable_thinking=False, enable_reflection=False)
    assert service.get_sync(no_passes, "b").tokens == 1000
    with pytest.raises(QuotaExceeded):
        submit(service, owner="a")  # 2000 + 2000 > 3000
    service.close()
    older = make_service(tmp_path, database_url, model_version="v1.1")
    assert older.get_sync(submit(older, owner="c"), "c").tokens == 1000
    older.close()


# ------------------------------------------------------------------ retention, orphans, names


def test_old_jobs_are_deleted_with_their_files(tmp_path: Path, database_url: str) -> None:
    service = make_service(tmp_path, database_url, job_retention=timedelta(days=1))
    old, recent, running = submit(service), submit(service), submit(service)
    for job_id in (old, recent):
        assert service.claim_next(0) is not None
        service.complete(
            job_id, produce(service, job_id), prompt_used="x", passes=[], inference_ms=1
        )
    assert service.claim_next(0) is not None  # `running` stays processing
    with service.store.session() as session:
        session.execute(
            update(JobRecord)
            .where(JobRecord.id == old)
            .values(finished_at=utcnow() - timedelta(days=2))
        )
    old_output = service.get_sync(old, None).outputs[0]
    old_file = service.output_path(old_output.token)
    service.cleanup_expired()
    assert [v.id for v in service.list_sync(None)] == [running, recent]
    assert not old_file.exists()
    service.close()
    never = make_service(tmp_path, database_url, job_retention=None)
    assert never.delete_old_jobs() == 0
    never.close()


def test_outputs_are_named_by_job_attempt_and_index(service: JobService) -> None:
    job_id = submit(service, num_images=2)
    claimed = service.claim_next(0)
    assert claimed is not None
    salt = service._held[job_id].output_salt
    service.complete(
        job_id, produce(service, job_id, 2), prompt_used="x", passes=[], inference_ms=1
    )
    tokens = [o.token for o in service.get_sync(job_id, None).outputs]
    assert tokens == [output_token(salt, claimed.attempt, i) for i in range(2)]
    assert len(set(tokens)) == 2 and all(len(t) == 32 for t in tokens)
    other = submit(service)
    service.claim_next(0)
    assert service._held[other].output_salt != salt  # unguessable from another job's names


def test_files_no_job_refers_to_are_swept_at_start(tmp_path: Path, database_url: str) -> None:
    service = make_service(tmp_path, database_url)
    kept = submit(service)
    outputs = tmp_path / "data" / "outputs"
    inputs = tmp_path / "data" / "inputs"
    (outputs / ("o" * 32 + ".png")).write_bytes(png())  # written, never recorded
    (inputs / ("f" * 32 + ".png")).write_bytes(png())  # saved, job never stored
    (outputs / "x.png.1234abcd.tmp").write_bytes(b"half")  # an interrupted write
    service.close()
    restarted = make_service(tmp_path, database_url)
    assert list(outputs.iterdir()) == []
    assert [p.name for p in inputs.iterdir()] == [f"{kept}.png"]
    restarted.close()


def test_a_released_attempt_does_not_count(tmp_path: Path, database_url: str) -> None:
    """A graceful shutdown hands the job back twice; with max_attempts=1 it still runs."""
    service = make_service(tmp_path, database_url, max_attempts=1)
    job_id = submit(service)
    for _ in range(2):
        assert service.claim_next(0) is not None
        released = service.release(job_id)
        assert released is not None and released.status is JobStatus.QUEUED
    claimed = service.claim_next(0)
    assert claimed is not None and claimed.attempt == 3
    service.close()
    restarted = make_service(tmp_path, database_url, max_attempts=1)  # now it dies mid-run
    view = restarted.get_sync(job_id, None)
    assert view.status is JobStatus.FAILED and view.error and view.error.code == "interrupted"
    restarted.close()
