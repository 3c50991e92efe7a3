"""The API node's sweeper: finds work that fell between the cracks and puts it back.

Every `sweep_interval_s`:
1. processing jobs whose worker stopped heartbeating -> re-queued and dispatched again (or
   failed once `max_attempts` is spent): `JobService.recover_lost`, whose re-queue dispatches;
2. queued jobs older than `dispatch_grace_s` with no message in the broker (the API node died
   between commit and dispatch, or the broker lost its data) -> dispatched again;
3. the webhook outbox is woken: it takes the entries whose due time has passed (a worker
   finished the job; a retry's time came; a sending node died and its lease ran out). An entry
   waiting for a retry in two hours is not touched before then.

Each step is safe to run on many API nodes at once: re-queues and webhook sends are conditional
updates, and a duplicate task is dropped by the worker's conditional claim.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Protocol

from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.heartbeat import WORKER_LOST_MESSAGE, lost_jobs
from stepedit.jobs.dispatch import Dispatcher
from stepedit.jobs.models import utcnow
from stepedit.jobs.service import JobService

logger = logging.getLogger(__name__)


class BrokerDispatcher(Dispatcher, Protocol):
    def job_ids_in_broker(self) -> set[str]:
        """Jobs with a message waiting in the broker or delivered and not yet acknowledged."""
        ...


class Sweeper:
    def __init__(
        self, service: JobService, dispatcher: BrokerDispatcher, settings: DistributedSettings
    ) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepedit-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def begin_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sweep(self) -> None:
        self.requeue_dead_workers_jobs()
        self.redispatch_lost_jobs()
        self.service.deliver_pending_webhooks()

    def requeue_dead_workers_jobs(self) -> int:
        lost = lost_jobs(self.service.store, self.settings.heartbeat_timeout_s)
        for job_id, attempt in lost:
            view = self.service.recover_lost(
                job_id, attempt, code="worker_lost", message=WORKER_LOST_MESSAGE
            )
            if view is not None:
                logger.warning(
                    "job %s: worker lost on attempt %d; %s", job_id, attempt, view.status
                )
        return len(lost)

    def redispatch_lost_jobs(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.settings.dispatch_grace_s)
        queued = self.service.store.queued_before(cutoff)
        if not queued:
            return 0
        in_broker = self.dispatcher.job_ids_in_broker()
        lost = [job for job in queued if job[0] not in in_broker]
        for job_id, request, flavour in lost:
            logger.warning("job %s: queued with no task in the broker; dispatching again", job_id)
            self.dispatcher.dispatch(job_id, request, flavour)
        return len(lost)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                self.sweep()
            except Exception as exc:  # the database or broker may be briefly down
                logger.warning("sweep failed: %s", exc)
