"""The API node's sweeper: finds work that fell between the cracks and puts it back.

Every `sweep_interval_s`:
1. processing jobs whose worker stopped heartbeating -> re-queued and re-dispatched (or failed
   once `max_attempts` is spent);
2. queued jobs older than `dispatch_grace_s` with no message in the broker (the API node died
   between commit and dispatch, or the broker lost its data) -> dispatched again;
3. terminal jobs whose webhook is still pending (the sending node died) -> delivered.

Each step is safe to run on many API nodes at once: re-queues and webhook sends are conditional
updates, and a duplicate task is dropped by the worker's conditional claim.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from stepedit.distributed.dispatch import CeleryDispatcher
from stepedit.distributed.schema import ClaimRecord, WorkerRecord
from stepedit.distributed.service import SharedJobService
from stepedit.jobs.models import JobRecord, utcnow
from stepedit.jobs.service import request_from_json
from stepedit.jobs.state import JobStatus

logger = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, service: SharedJobService, dispatcher: CeleryDispatcher) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.settings = service.settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepedit-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sweep(self) -> None:
        self.requeue_dead_workers_jobs()
        self.redispatch_lost_jobs()
        self.service.deliver_pending_webhooks()

    def requeue_dead_workers_jobs(self) -> int:
        now = utcnow()
        timeout = timedelta(seconds=self.settings.heartbeat_timeout_s)
        with self.service.store.session() as session:
            rows = session.execute(
                select(
                    JobRecord.id,
                    JobRecord.attempt,
                    JobRecord.started_at,
                    ClaimRecord.claimed_at,
                    WorkerRecord.last_seen,
                )
                .outerjoin(ClaimRecord, ClaimRecord.job_id == JobRecord.id)
                .outerjoin(WorkerRecord, WorkerRecord.id == ClaimRecord.worker_id)
                .where(JobRecord.status == JobStatus.PROCESSING.value)
            ).all()
        dead = [
            (job_id, attempt)
            for job_id, attempt, started_at, claimed_at, last_seen in rows
            if _last_sign_of_life(started_at, claimed_at, last_seen) < now - timeout
        ]
        for job_id, attempt in dead:
            view = self.service.requeue_dead(job_id, attempt)
            if view is not None:
                self.dispatcher.dispatch(view.id, view.request, view.flavour)
        return len(dead)

    def redispatch_lost_jobs(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.settings.dispatch_grace_s)
        with self.service.store.session() as session:
            rows = session.execute(
                select(JobRecord.id, JobRecord.request_json, JobRecord.flavour).where(
                    JobRecord.status == JobStatus.QUEUED.value, JobRecord.queued_at < cutoff
                )
            ).all()
        if not rows:
            return 0
        in_broker = self.dispatcher.job_ids_in_broker()
        lost = [row for row in rows if row[0] not in in_broker]
        for job_id, request_json, flavour in lost:
            logger.warning("job %s: queued with no task in the broker; dispatching again", job_id)
            self.dispatcher.dispatch(job_id, request_from_json(request_json), flavour)
        return len(lost)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                self.sweep()
            except Exception as exc:  # the database or broker may be briefly down
                logger.warning("sweep failed: %s", exc)


def _last_sign_of_life(
    started_at: datetime | None, claimed_at: datetime | None, last_seen: datetime | None
) -> datetime:
    """When the worker running a job was last known alive: its heartbeat or its claim."""
    if claimed_at is None:  # claimed outside this mode (e.g. before a switch): its start
        return started_at or datetime.min.replace(tzinfo=UTC)
    return max(claimed_at, last_seen) if last_seen else claimed_at
