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
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from celery import Celery
from celery.exceptions import Reject
from PIL import Image
from sqlalchemy.exc import DBAPIError

from stepedit.distributed.celery_app import TASK_NAME
from stepedit.distributed.heartbeat import WORKER_LOST_MESSAGE, BusyClock, lost_jobs
from stepedit.engine.editor import Editor, EditorResult, ProgressCallback
from stepedit.engine.safety import SafetyChecker
from stepedit.engine.worker import RELEASE_WAIT_S, Abandoned, RunControl, run_job
from stepedit.errors import ServiceUnavailable, StepEditError
from stepedit.jobs.service import ClaimedJob, ClaimLost, JobService
from stepedit.jobs.state import JobStatus
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
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult:
        deadline = time.monotonic() + self.timeout_s

        def checked(step: int, total_steps: int, stage: str) -> None:
            if time.monotonic() > deadline:
                raise self._timed_out()
            on_progress(step, total_steps, stage)

        with self._alarm():
            return self.editor.edit(request, image, checked, mask=mask)

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


def claim_job(
    service: JobService, job_id: str, worker_id: str, heartbeat_timeout_s: float
) -> ClaimedJob | None:
    """Take `job_id` for `worker_id`; None when it is not ours to run (done, or alive elsewhere).

    A queued job is claimed. A processing one is taken over only when its worker has shown no
    sign of life for `heartbeat_timeout_s` (the message came back after that worker died): its
    attempt is recovered first (re-queued, or failed once max_attempts are spent), then claimed.
    """
    claimed = service.claim(job_id, worker_id)
    if claimed is not None:
        return claimed
    for lost_id, attempt in lost_jobs(service.store, heartbeat_timeout_s, job_id):
        view = service.recover_lost(
            lost_id, attempt, code="worker_lost", message=WORKER_LOST_MESSAGE
        )
        if view is not None and view.status is JobStatus.QUEUED:
            return service.claim(job_id, worker_id)
    return None


@dataclass
class WorkerRuntime:
    """What one worker process holds for its whole life: the model, loaded once."""

    service: JobService
    editor: Editor
    worker_id: str
    clock: BusyClock
    heartbeat_timeout_s: float
    safety: SafetyChecker | None = None
    nsfw_filter: bool = True
    control: RunControl = field(default_factory=RunControl)

    def run(self, job_id: str) -> str:
        """Run `job_id` if it is ours to run; returns what happened (for logs and tests):
        "done", "released" (a shutdown handed it back), "skipped", "lost" or "abandoned"."""
        if self.control.release.is_set():
            return "released"  # shutting down: leave it in the queue for another worker
        job = claim_job(self.service, job_id, self.worker_id, self.heartbeat_timeout_s)
        if job is None:
            logger.info("job %s: not ours to run (done, or running on a live worker)", job_id)
            return "skipped"
        self.clock.start(job_id)
        try:
            outcome = run_job(
                self.service,
                self.editor,
                job,
                safety=self.safety,
                nsfw_filter=self.nsfw_filter,
                control=self.control,
            )
            return "released" if outcome == "released" else "done"
        except ClaimLost:
            logger.warning("job %s: taken over by another worker; result dropped", job_id)
            return "lost"
        except Abandoned:
            return "abandoned"
        finally:
            self.clock.stop()

    def begin_shutdown(self, grace_s: float) -> None:
        """The worker got SIGTERM: the running job has `grace_s` to finish, then it is handed
        back to the queue at its next step (its attempt not counted), and writes still being
        retried stop a little later."""
        release = threading.Timer(grace_s, self.control.release.set)
        abandon = threading.Timer(grace_s + RELEASE_WAIT_S, self.control.abandon.set)
        for timer in (release, abandon):
            timer.daemon = True
            timer.start()


def register_task(app: Celery, runtime: WorkerRuntime) -> Any:
    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_edit_job(task: Any, job_id: str) -> str:
        try:
            outcome = runtime.run(job_id)
            if outcome == "released":  # back in the broker, for a worker that is not stopping
                raise Reject(f"job {job_id} handed back by a shutdown", requeue=True)
            return outcome
        except (ServiceUnavailable, DBAPIError) as exc:
            # The database is briefly down: the job stays where it was; try again later.
            logger.warning("job %s: database unavailable (%s); retrying", job_id, exc)
            raise task.retry(countdown=DATABASE_RETRY_S, max_retries=None) from exc

    return run_edit_job
