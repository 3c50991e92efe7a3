"""JobService over SQLite: queue bound, ownership, cancel, restart recovery, expiry, quotas."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from stepedit.errors import NotFound, QueueFull, QuotaExceeded, ServiceUnavailable
from stepedit.jobs.service import INTERRUPTED_MESSAGE, JobService, ProducedImage
from stepedit.jobs.state import JobStatus
from stepedit.jobs.store import JobStore
from stepedit.request import EditRequest
from stepedit.settings import Settings


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_service(tmp_path: Path, database_url: str, **overrides: object) -> JobService:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        **overrides,  # type: ignore[arg-type]
    )
    service = JobService(settings)
    service.recover()
    return service


@pytest.fixture
def service(tmp_path: Path, database_url: str) -> Iterator[JobService]:
    service = make_service(tmp_path, database_url, max_queue=3)
    yield service
    service.close()


def submit(service: JobService, owner: str | None = None, **fields: object) -> str:
    request = EditRequest(prompt="add a hat", **fields)  # type: ignore[arg-type]
    return service.submit_sync(request, png(), owner=owner, flavour="native").id


def finish(service: JobService, job_id: str) -> None:
    claimed = service.claim_next(0)
    assert claimed is not None and claimed.id == job_id
    image = ProducedImage(png(), claimed.request.seed or 0, False, "png", 32, 32)
    service.complete(job_id, [image], prompt_used="add a hat", passes=["edit"], inference_ms=5.0)


def test_submit_stores_the_request_with_its_seed_drawn(service: JobService) -> None:
    job_id = submit(service, seed=None, guidance_scale=3.5)
    view = service.get_sync(job_id, None)
    assert view.status == JobStatus.QUEUED
    assert view.request.guidance_scale == 3.5
    assert view.request.seed == view.seed and 0 <= view.seed < 2**31
    claimed = service.claim_next(0)
    assert claimed is not None and claimed.request == view.request  # handed over unchanged


def test_explicit_seed_is_kept(service: JobService) -> None:
    assert service.get_sync(submit(service, seed=42), None).seed == 42


def test_full_queue_answers_queue_full(service: JobService) -> None:
    for _ in range(3):
        submit(service)
    with pytest.raises(QueueFull):
        submit(service)
    service.claim_next(0)  # one leaves the queue: room again
    submit(service)


def test_jobs_run_in_submission_order(service: JobService) -> None:
    ids = [submit(service) for _ in range(3)]
    claimed = [service.claim_next(0) for _ in range(3)]
    assert [c.id for c in claimed if c] == ids
    assert service.claim_next(0) is None


def test_other_owner_sees_nothing(service: JobService) -> None:
    job_id = submit(service, owner="alice")
    with pytest.raises(NotFound):
        service.get_sync(job_id, "bob")
    with pytest.raises(NotFound):
        service.get_sync(job_id, None)
    with pytest.raises(NotFound):
        service.cancel_sync(job_id, "bob")
    assert [v.id for v in service.list_sync("alice")] == [job_id]
    assert service.list_sync("bob") == []


def test_completion_stores_outputs_and_deletes_the_input(service: JobService) -> None:
    job_id = submit(service)
    input_files = list((service.settings.data_dir / "inputs").iterdir())
    assert len(input_files) == 1
    finish(service, job_id)
    view = service.get_sync(job_id, None)
    assert view.status == JobStatus.SUCCEEDED
    assert view.timings.inference_ms == 5.0
    assert view.passes == ("edit",)
    assert not input_files[0].exists()
    (output,) = view.outputs
    assert output.url.endswith(f"/files/{output.token}.png")
    assert service.output_path(output.token).read_bytes() == png()


def mask_png() -> bytes:
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_mask_is_kept_beside_its_image_through_a_restart_and_ends_with_it(
    tmp_path: Path, database_url: str
) -> None:
    first = make_service(tmp_path, database_url)
    request = EditRequest(prompt="paint the left half")
    job_id = first.submit_sync(request, png(), mask=mask_png(), owner=None, flavour="native").id
    inputs = tmp_path / "data" / "inputs"
    assert sorted(p.name for p in inputs.iterdir()) == [f"{job_id}.mask.png", f"{job_id}.png"]
    first.claim_next(0)  # the server "dies" mid-run
    first.close()

    second = make_service(tmp_path, database_url)  # recover(): re-queued, files not orphans
    assert sorted(p.name for p in inputs.iterdir()) == [f"{job_id}.mask.png", f"{job_id}.png"]
    claimed = second.claim_next(0)
    assert claimed is not None and claimed.mask_path is not None
    assert claimed.mask_path.read_bytes() == mask_png()
    image = ProducedImage(png(), claimed.request.seed or 0, False, "png", 32, 32)
    region = ProducedImage(mask_png(), claimed.request.seed or 0, False, "png", 32, 32)
    view = second.complete(
        job_id, [image], region_masks=[region], prompt_used="p", passes=["edit"], inference_ms=1.0
    )
    assert list(inputs.iterdir()) == []  # the image and its mask went with the job's end
    (kept,) = view.region_masks
    assert len(view.outputs) == 1 and kept.token != view.outputs[0].token
    assert second.output_path(kept.token).read_bytes() == mask_png()
    second.close()


def test_a_job_without_a_mask_claims_none(service: JobService) -> None:
    submit(service)
    claimed = service.claim_next(0)
    assert claimed is not None and claimed.mask_path is None


def test_a_mask_no_job_holds_is_swept_with_its_image(service: JobService) -> None:
    inputs = service.settings.data_dir / "inputs"
    held = submit(service)
    stray = "0" * 32
    (inputs / f"{stray}.png").write_bytes(png())
    (inputs / f"{stray}.mask.png").write_bytes(mask_png())
    assert service.sweep_orphans(timedelta(0)) == 2
    assert [p.name for p in inputs.iterdir()] == [f"{held}.png"]


def test_cancel_queued_job_is_immediate(service: JobService) -> None:
    job_id = submit(service)
    assert service.cancel_sync(job_id, None).status == JobStatus.CANCELED
    assert service.claim_next(0) is None


def test_cancel_running_job_is_seen_at_the_next_step(service: JobService) -> None:
    job_id = submit(service)
    service.claim_next(0)
    assert service.cancel_sync(job_id, None).status == JobStatus.PROCESSING
    assert service.report_progress(job_id, 1, 28, "denoise") is True
    assert service.finish_canceled(job_id).status == JobStatus.CANCELED


def test_idempotency_key_returns_the_same_job(service: JobService) -> None:
    request = EditRequest(prompt="x")
    first = service.submit_sync(request, png(), owner="a", flavour="native", idempotency_key="k")
    again = service.submit_sync(request, png(), owner="a", flavour="native", idempotency_key="k")
    other = service.submit_sync(request, png(), owner="b", flavour="native", idempotency_key="k")
    assert first.id == again.id != other.id


def test_restart_requeues_then_fails_an_interrupted_job(tmp_path: Path, database_url: str) -> None:
    first = make_service(tmp_path, database_url, max_attempts=2)
    job_id = submit(first)
    waiting_id = submit(first)
    first.claim_next(0)  # the server "dies" here, mid-run
    first.close()

    second = make_service(tmp_path, database_url, max_attempts=2)  # recover() re-queues it
    view = second.get_sync(job_id, None)
    assert (view.status, view.attempt) == (JobStatus.QUEUED, 1)
    assert second.get_sync(waiting_id, None).status == JobStatus.QUEUED
    claimed = second.claim_next(0)
    assert claimed is not None and (claimed.id, claimed.attempt) == (job_id, 2)
    second.close()

    third = make_service(tmp_path, database_url, max_attempts=2)  # died again: no more retries
    view = third.get_sync(job_id, None)
    assert view.status == JobStatus.FAILED
    assert view.error is not None and view.error.message == INTERRUPTED_MESSAGE
    assert third.get_sync(waiting_id, None).status == JobStatus.QUEUED
    third.close()


def test_expired_outputs_are_deleted(tmp_path: Path, database_url: str) -> None:
    service = make_service(tmp_path, database_url, output_ttl=timedelta(seconds=-1))
    job_id = submit(service)
    finish(service, job_id)
    (output,) = service.get_sync(job_id, None).outputs
    with pytest.raises(NotFound):
        service.output_path(output.token)
    assert service.cleanup_expired() == 1
    assert list((service.settings.data_dir / "outputs").iterdir()) == []
    assert service.cleanup_expired() == 0
    service.close()


def test_unknown_or_malformed_tokens_are_not_found(service: JobService) -> None:
    for token in ("nope", "../../etc/passwd", "A" * 32):
        with pytest.raises(NotFound):
            service.output_path(token)


def test_daily_token_quota(tmp_path: Path, database_url: str) -> None:
    service = make_service(tmp_path, database_url, daily_token_quota=3000, tokens_per_edit=1000)
    submit(service, owner="a")
    submit(service, owner="a", num_images=2)
    with pytest.raises(QuotaExceeded):
        submit(service, owner="a")
    submit(service, owner="b")  # quotas are per key
    service.close()


def test_counts_by_status_feed_the_metrics(service: JobService) -> None:
    submit(service)
    job_id = submit(service)
    service.cancel_sync(job_id, None)
    assert service.count_by_status() == {"queued": 1, "canceled": 1}
    assert service.queue_depth() == 1


def test_events_follow_changes_and_repeat_on_quiet_streams(service: JobService) -> None:
    job_id = submit(service)

    async def collect() -> list[JobStatus]:
        seen = []
        async for view in service.events(job_id, None, poll_s=0.01, heartbeat_s=0.05):
            seen.append(view.status)
            if len(seen) == 3:
                service.claim_next(0)
            if len(seen) == 5:
                service.fail(job_id, "x", "y")
        return seen

    seen = asyncio.run(collect())
    assert seen[:3] == [JobStatus.QUEUED] * 3  # heartbeats while nothing changes
    assert JobStatus.PROCESSING in seen and seen[-1] == JobStatus.FAILED


def test_a_database_that_does_not_answer_is_service_unavailable(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.engine.dispose()
    (tmp_path / "jobs.db").unlink()
    (tmp_path / "jobs.db").mkdir()  # the file is gone: no connection can be opened
    with pytest.raises(ServiceUnavailable):
        store.ping()
    with pytest.raises(ServiceUnavailable):
        store.count_by_status()
