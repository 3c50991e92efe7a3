"""The worker's Celery task: run one job, found by id in the shared store.

Only workers import this module (it loads the engine). The task is acknowledged when it
returns, i.e. after the job's terminal state is committed; a worker killed mid-job never acks,
so the broker hands the message to another worker (and the API node's sweeper re-queues the
job once the dead worker's heartbeat is stale, whichever comes first).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from celery import Celery
from PIL import Image
from sqlalchemy.exc import DBAPIError

from stepedit.distributed.celery_app import TASK_NAME
from stepedit.distributed.heartbeat import BusyClock
from stepedit.distributed.service import ClaimLost, SharedJobService
from stepedit.engine.editor import Editor, EditorResult, ProgressCallback
from stepedit.engine.safety import SafetyChecker
from stepedit.engine.worker import run_job
from stepedit.errors import ServiceUnavailable, StepEditError
from stepedit.request import EditRequest

logger = logging.getLogger(__name__)

DATABASE_RETRY_S = 5.0


class JobTimedOut(StepEditError):
    code = "timeout"


class TimedEditor:
    """An `Editor` that gives up after `timeout_s`: checked at every progress step, and by
    SIGALRM in the main thread (the solo pool runs tasks there) for a step that hangs."""

    def __init__(self, editor: Editor, timeout_s: float) -> None:
        self.editor = editor
        self.timeout_s = timeout_s

    def edit(
        self, request: EditRequest, image: Image.Image, on_progress: ProgressCallback
    ) -> EditorResult:
        deadline = time.monotonic() + self.timeout_s

        def checked(step: int, total_steps: int, stage: str) -> None:
            if time.monotonic() > deadline:
                raise self._timed_out()
            on_progress(step, total_steps, stage)

        with self._alarm():
            return self.editor.edit(request, image, checked)

    def _timed_out(self) -> JobTimedOut:
        return JobTimedOut(f"the edit took longer than the {self.timeout_s:g} s job time limit")

    @contextmanager
    def _alarm(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_alarm(_signum: int, _frame: FrameType | None) -> None:
            raise self._timed_out()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@dataclass
class WorkerRuntime:
    """What one worker process holds for its whole life: the model, loaded once."""

    service: SharedJobService
    editor: Editor
    worker_id: str
    clock: BusyClock
    safety: SafetyChecker | None = None
    nsfw_filter: bool = True

    def run(self, job_id: str) -> str:
        """Run `job_id` if it is ours to run; returns what happened (for logs and tests)."""
        job = self.service.claim(job_id, self.worker_id)
        if job is None:
            return "skipped"
        self.clock.start(job_id)
        try:
            run_job(
                self.service, self.editor, job, safety=self.safety, nsfw_filter=self.nsfw_filter
            )
            return "done"
        except ClaimLost:
            logger.warning("job %s: taken over by another worker; result dropped", job_id)
            return "lost"
        finally:
            self.service.release(job_id)
            self.clock.stop()


def register_task(app: Celery, runtime: WorkerRuntime) -> Any:
    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_edit_job(task: Any, job_id: str) -> str:
        try:
            return runtime.run(job_id)
        except (ServiceUnavailable, DBAPIError) as exc:
            # The database is briefly down: the job stays where it was; try again later.
            logger.warning("job %s: database unavailable (%s); retrying", job_id, exc)
            raise task.retry(countdown=DATABASE_RETRY_S, max_retries=None) from exc

    return run_edit_job
