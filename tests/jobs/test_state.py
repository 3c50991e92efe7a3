"""The state machine and the store's one status write: guarded by (status, attempt)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from stepedit.jobs.service import ClaimLost, JobService, ProducedImage
from stepedit.jobs.state import ALLOWED_TRANSITIONS, InvalidTransition, JobStatus, check_transition
from stepedit.request import EditRequest
from stepedit.settings import Settings

QUEUED, PROCESSING, SUCCEEDED, FAILED, CANCELED = (
    JobStatus.QUEUED,
    JobStatus.PROCESSING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELED,
)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, max_attempts=3)


@pytest.fixture
def service(settings: Settings) -> Iterator[JobService]:
    service = JobService(settings)
    yield service
    service.close()


def submit(service: JobService) -> str:
    request = EditRequest(prompt="x", seed=3, num_inference_steps=4)
    return service.submit_sync(request, png(), owner=None, flavour="native").id


def test_terminal_statuses() -> None:
    assert [s for s in JobStatus if s.is_terminal] == [SUCCEEDED, FAILED, CANCELED]


def test_terminal_states_are_final_and_a_job_runs_before_it_succeeds() -> None:
    for terminal in (SUCCEEDED, FAILED, CANCELED):
        assert ALLOWED_TRANSITIONS[terminal] == frozenset()
        with pytest.raises(InvalidTransition):
            check_transition("j1", terminal, PROCESSING)
    with pytest.raises(InvalidTransition):
        check_transition("j1", QUEUED, SUCCEEDED)


def test_a_claim_starts_the_next_attempt_and_stamps_it(service: JobService) -> None:
    job_id = submit(service)
    moved = service.store.transition(job_id, QUEUED, 0, PROCESSING, worker_id="w1")
    assert moved is not None
    view = moved.view
    assert (view.status, view.attempt, view.progress.stage) == (PROCESSING, 1, "starting")
    assert view.started_at is not None and view.finished_at is None


def test_a_transition_is_refused_once_the_status_moved_on(service: JobService) -> None:
    job_id = submit(service)
    assert service.store.transition(job_id, QUEUED, 0, PROCESSING) is not None
    # A second writer that also saw (queued, 0): claiming and canceling both match no row.
    assert service.store.transition(job_id, QUEUED, 0, PROCESSING) is None
    assert service.store.transition(job_id, QUEUED, 0, CANCELED) is None
    assert service.get_sync(job_id, None).status == PROCESSING
    assert service.get_sync(job_id, None).attempt == 1


def test_a_transition_is_refused_for_a_stale_attempt(service: JobService) -> None:
    job_id = submit(service)
    service.store.transition(job_id, QUEUED, 0, PROCESSING)
    service.store.transition(job_id, PROCESSING, 1, QUEUED)  # its worker died
    service.store.transition(job_id, QUEUED, 1, PROCESSING)  # attempt 2 runs
    # Attempt 1's worker comes back and reports: nothing it says lands.
    assert service.store.transition(job_id, PROCESSING, 1, SUCCEEDED) is None
    assert service.store.transition(job_id, PROCESSING, 1, FAILED, error_code="x") is None
    assert service.store.record_progress(job_id, 1, 2, 4, "denoise") is True  # stop
    view = service.get_sync(job_id, None)
    assert (view.status, view.attempt, view.progress.step) == (PROCESSING, 2, 0)
    assert service.store.transition(job_id, PROCESSING, 2, SUCCEEDED) is not None


def test_a_transition_the_table_forbids_is_a_programming_error(service: JobService) -> None:
    job_id = submit(service)
    with pytest.raises(InvalidTransition):
        service.store.transition(job_id, QUEUED, 0, SUCCEEDED)
    with pytest.raises(ValueError, match="error_code"):
        service.store.transition(job_id, QUEUED, 0, FAILED)
    assert service.get_sync(job_id, None).status == QUEUED


def test_a_taken_over_worker_cannot_finish_the_job(settings: Settings) -> None:
    """Two processes on one database: the first's attempt is recovered and re-run by the second;
    the first's progress, result and failure are refused and its output files removed."""
    first, second = JobService(settings), JobService(settings)
    try:
        job_id = submit(first)
        stale = first.claim_next(0)
        assert stale is not None and stale.attempt == 1
        assert second.recover_lost(job_id, 1, code="interrupted", message="x") is not None
        current = second.claim_next(0)
        assert current is not None and current.attempt == 2

        assert first.report_progress(job_id, 1, 4, "denoise") is True
        outputs_dir = settings.data_dir / "outputs"
        image = ProducedImage(png(), 3, False, "png", 16, 16)
        with pytest.raises(ClaimLost):
            first.complete(job_id, [image], prompt_used="x", passes=["edit"], inference_ms=1.0)
        assert list(outputs_dir.iterdir()) == []  # the refused result left no file
        with pytest.raises(ClaimLost):
            first.fail(job_id, "internal_error", "late")

        assert second.report_progress(job_id, 1, 4, "denoise") is False
        view = second.complete(job_id, [image], prompt_used="x", passes=["edit"], inference_ms=1.0)
        assert (view.status, view.attempt, len(view.outputs)) == (SUCCEEDED, 2, 1)
    finally:
        first.close()
        second.close()


def test_a_terminal_transition_deletes_the_input_and_counts_the_job(service: JobService) -> None:
    job_id = submit(service)
    (input_file,) = (service.settings.data_dir / "inputs").iterdir()
    service.claim_next(0)
    service.fail(job_id, "invalid_request", "bad size")
    assert not input_file.exists()
    view = service.get_sync(job_id, None)
    assert view.error is not None and (view.error.code, view.error.message) == (
        "invalid_request",
        "bad size",
    )
    finished = service.metrics.registry.get_sample_value(
        "stepedit_jobs_finished_total", {"status": "failed"}
    )
    assert finished == 1.0
