from datetime import UTC, datetime

import pytest

from stepedit.jobs.models import JobRecord
from stepedit.jobs.state import InvalidTransition, JobStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def queued_record() -> JobRecord:
    return JobRecord(id="j1", status=JobStatus.QUEUED.value, attempt=0, progress_step=0)


def test_terminal_statuses() -> None:
    assert [s for s in JobStatus if s.is_terminal] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    ]


def test_happy_path_stamps_times_and_counts_attempts() -> None:
    record = queued_record()
    record.start(NOW)
    assert (record.job_status, record.started_at, record.attempt) == (JobStatus.PROCESSING, NOW, 1)
    record.succeed(NOW)
    assert record.job_status == JobStatus.SUCCEEDED
    assert record.finished_at == NOW


def test_failure_records_the_error() -> None:
    record = queued_record()
    record.start(NOW)
    record.fail(NOW, "invalid_request", "bad size")
    assert (record.error_code, record.error_message) == ("invalid_request", "bad size")


def test_interrupted_job_can_go_back_to_the_queue() -> None:
    record = queued_record()
    record.start(NOW)
    record.requeue(NOW)
    assert record.job_status == JobStatus.QUEUED
    assert record.started_at is None
    record.start(NOW)
    assert record.attempt == 2


@pytest.mark.parametrize("terminal", ["succeed", "cancel"])
def test_terminal_states_are_final(terminal: str) -> None:
    record = queued_record()
    record.start(NOW)
    getattr(record, terminal)(NOW)
    with pytest.raises(InvalidTransition):
        record.start(NOW)
    with pytest.raises(InvalidTransition):
        record.fail(NOW, "x", "y")


def test_queued_job_cannot_succeed_without_running() -> None:
    with pytest.raises(InvalidTransition):
        queued_record().succeed(NOW)
