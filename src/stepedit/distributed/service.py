"""`SharedJobService`: the `JobService` of many processes over one PostgreSQL database.

What changes from the single-machine service, and why:
- Accepting a job = committing it, then dispatching a Celery task (a failed dispatch loses
  nothing: the sweeper re-sends it). The broker is checked first so an outage answers 503.
- Claims are conditional UPDATEs on (status, attempt): two workers handed the same job (a
  redelivered message) cannot both run the same attempt. The attempt number is the fencing
  token: progress, completion and failure only land while the worker's attempt is current, so
  exactly one result is recorded.
- Webhooks are sent by API nodes only, after a conditional pending -> sending update, so each
  fires once however many nodes sweep.
- Database errors become `ServiceUnavailable` (503 in every flavour's shape).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.dispatch import CeleryDispatcher, Dispatcher
from stepedit.distributed.schema import ClaimRecord, WorkerRecord, create_tables
from stepedit.distributed.storage import ObjectStorage, fetch_local, storage_from_settings
from stepedit.errors import NotFound, ServiceUnavailable, StepEditError
from stepedit.jobs.models import JobRecord, OutputRecord, utcnow
from stepedit.jobs.service import ClaimedJob, JobService, request_from_json, to_native_dict
from stepedit.jobs.state import TERMINAL_STATUSES, JobStatus
from stepedit.jobs.storage import is_token
from stepedit.jobs.store import JobStore
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest

logger = logging.getLogger(__name__)

Role = Literal["api", "worker"]
T = TypeVar("T")
WORKER_LOST_MESSAGE = "the worker running this job stopped responding, on every attempt"
_TERMINAL = [status.value for status in TERMINAL_STATUSES]


class ClaimLost(StepEditError):
    """This worker's attempt is no longer current (another worker took the job over)."""

    code = "claim_lost"


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)
    )


class SharedJobService(JobService):
    def __init__(
        self,
        settings: DistributedSettings,
        *,
        role: Role,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        store = _open_store(settings.resolved_database_url)
        super().__init__(settings, store=store, storage=storage_from_settings(settings))
        self.settings: DistributedSettings = settings
        self.role = role
        self.dispatcher = dispatcher
        self._held: dict[str, int] = {}  # job id -> attempt this worker runs
        self.metrics.registry.register(_FleetCollector(self))

    @classmethod
    def for_api(cls, settings: DistributedSettings) -> SharedJobService:
        return cls(settings, role="api", dispatcher=CeleryDispatcher(settings))

    # ---------------------------------------------------------------- readiness

    @property
    def is_ready(self) -> bool:
        if self.role == "worker":
            return self._is_worker_ready
        try:
            self.check_dependencies()
        except ServiceUnavailable:
            return False
        return True

    @is_ready.setter
    def is_ready(self, value: bool) -> None:
        self._is_worker_ready = value

    def check_dependencies(self) -> None:
        """ServiceUnavailable unless the database (and, on an API node, the broker) answer."""
        self._guard(self._ping_database)
        if self.dispatcher is not None:
            self.dispatcher.check_available()

    def _ping_database(self) -> None:
        with self.store.session() as session:
            session.execute(text("SELECT 1"))

    def live_workers(self) -> builtins.list[WorkerRecord]:
        since = utcnow() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        with self.store.session() as session:
            return builtins.list(
                session.scalars(
                    select(WorkerRecord)
                    .where(WorkerRecord.last_seen >= since)
                    .order_by(WorkerRecord.id)
                ).all()
            )

    def health(self) -> dict[str, Any]:
        """The API node's /health body; raises ServiceUnavailable when a dependency is down."""
        self.check_dependencies()
        now = utcnow()
        workers = self._guard(self.live_workers)
        return {
            "status": "ok",
            "database": "ok",
            "broker": "ok",
            "workers": [
                {
                    "id": w.id,
                    "model_version": w.model_version,
                    "queue": w.queue,
                    "device": w.device,
                    "busy": w.current_job is not None,
                    "busy_ratio": round(w.busy_ratio, 3),
                    "jobs_done": w.jobs_done,
                    "last_seen_s": round((now - w.last_seen).total_seconds(), 1),
                }
                for w in workers
            ],
        }

    # ---------------------------------------------------------------- API side

    def recover(self) -> None:
        """Nothing to re-queue at start: processing jobs may be running on live workers.

        Dead workers' jobs, lost dispatches and unsent webhooks are the sweeper's business.
        """

    def submit_sync(
        self,
        request: EditRequest,
        image: bytes,
        *,
        owner: str | None,
        flavour: str,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        if self.dispatcher is not None:
            self.dispatcher.check_available()
        view = self._guard(
            lambda: super(SharedJobService, self).submit_sync(
                request,
                image,
                owner=owner,
                flavour=flavour,
                webhook_url=webhook_url,
                idempotency_key=idempotency_key,
            )
        )
        if self.dispatcher is not None and view.status == JobStatus.QUEUED:
            try:
                self.dispatcher.dispatch(view.id, view.request, flavour)
            except ServiceUnavailable:
                # Committed, so accepted: the sweeper sends it once the broker is back.
                logger.warning("job %s: dispatch failed; the sweeper will resend it", view.id)
        return view

    def get_sync(self, job_id: str, owner: str | None) -> JobView:
        return self._guard(lambda: super(SharedJobService, self).get_sync(job_id, owner))

    def list_sync(self, owner: str | None, limit: int = 20) -> builtins.list[JobView]:
        return self._guard(lambda: super(SharedJobService, self).list_sync(owner, limit))

    def cancel_sync(self, job_id: str, owner: str | None) -> JobView:
        return self._guard(lambda: super(SharedJobService, self).cancel_sync(job_id, owner))

    def count_by_status(self) -> dict[str, int]:
        return self._guard(super().count_by_status)

    def output_path(self, token: str) -> Path:
        if not isinstance(self.storage, ObjectStorage):
            return self._guard(lambda: super(SharedJobService, self).output_path(token))
        if not is_token(token):
            raise NotFound("no such file")
        with self._sessions() as session:
            record = session.get(OutputRecord, token)
            if record is None or record.deleted or record.expires_at <= utcnow():
                raise NotFound("no such file (it may have expired)")
            recorded = record.path
        try:
            return self.storage.fetch(recorded)
        except FileNotFoundError as exc:
            raise NotFound("no such file") from exc

    def requeue_dead(self, job_id: str, seen_attempt: int) -> JobView | None:
        """Sweeper: re-queue (or fail, past max_attempts) a job whose worker died.

        Conditional on the attempt the sweeper saw, so a live takeover is never undone.
        Returns the view when the job was re-queued (it must be dispatched again).
        """
        now = utcnow()
        with self._sessions() as session:
            if seen_attempt >= self.settings.max_attempts:
                failed = self._fence(session, job_id, seen_attempt).values(
                    status=JobStatus.FAILED.value,
                    finished_at=now,
                    error_code="worker_lost",
                    error_message=WORKER_LOST_MESSAGE,
                    progress_stage="failed",
                )
                if _rowcount(session.execute(failed)) == 1:
                    record = session.get(JobRecord, job_id)
                    assert record is not None
                    session.refresh(record)
                    self._on_terminal(record)
                    logger.warning(
                        "job %s: worker lost on attempt %d; failed", job_id, seen_attempt
                    )
                return None
            requeued = self._fence(session, job_id, seen_attempt).values(
                status=JobStatus.QUEUED.value,
                started_at=None,
                progress_step=0,
                progress_stage="queued",
            )
            if _rowcount(session.execute(requeued)) != 1:
                return None
            record = session.get(JobRecord, job_id)
            assert record is not None
            session.refresh(record)
            logger.warning("job %s: worker lost on attempt %d; re-queued", job_id, seen_attempt)
            return self._view(record)

    # ---------------------------------------------------------------- worker side

    def claim(self, job_id: str, worker_id: str) -> ClaimedJob | None:
        """Take `job_id` for this worker; None when it is not ours to run (done, or live elsewhere).

        A queued job is taken with a conditional UPDATE; a processing job only when the worker
        holding it has stopped heartbeating (its message came back after it died).
        """
        now = utcnow()
        exhausted_attempt: int | None = None
        with self._sessions() as session:
            record = session.get(JobRecord, job_id)
            if record is None or record.job_status.is_terminal:
                return None
            seen = record.attempt
            if record.job_status == JobStatus.PROCESSING:
                if self._holder_alive(session, job_id, worker_id, now):
                    logger.info("job %s: already running on a live worker; skipped", job_id)
                    return None
                if seen >= self.settings.max_attempts:
                    exhausted_attempt = seen
            if exhausted_attempt is not None:
                taken_count = 0
            else:
                taken_count = _rowcount(
                    session.execute(self._take(job_id, record.status, seen, now))
                )
            if taken_count != 1:
                record = None
            else:
                session.merge(
                    ClaimRecord(
                        job_id=job_id, worker_id=worker_id, attempt=seen + 1, claimed_at=now
                    )
                )
                session.refresh(record)
                request = dataclasses.replace(
                    request_from_json(record.request_json), seed=record.seed
                )
                input_path = record.input_path
        if exhausted_attempt is not None:
            self.requeue_dead(job_id, exhausted_attempt)  # fails it: no attempts left
            return None
        if record is None:
            return None
        if input_path is None:
            raise ClaimLost(f"job {job_id}: its input is gone")
        self._held[job_id] = seen + 1
        logger.info("job %s: claimed by %s (attempt %d)", job_id, worker_id, seen + 1)
        return ClaimedJob(job_id, request, fetch_local(self.storage, input_path), seen + 1)

    def _take(self, job_id: str, status: str, seen: int, now: datetime) -> Any:
        return (
            update(JobRecord)
            .where(JobRecord.id == job_id, JobRecord.status == status, JobRecord.attempt == seen)
            .values(
                status=JobStatus.PROCESSING.value,
                attempt=seen + 1,
                started_at=now,
                progress_step=0,
                progress_stage="starting",
            )
        )

    def release(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def report_progress(self, job_id: str, step: int, total_steps: int, stage: str) -> bool:
        attempt = self._held.get(job_id)
        if attempt is None:
            return super().report_progress(job_id, step, total_steps, stage)
        with self.store.session() as session:
            moved = self._fence(session, job_id, attempt).values(
                progress_step=step, progress_total=total_steps, progress_stage=stage[:32]
            )
            if _rowcount(session.execute(moved)) != 1:
                return True  # our attempt is over: stop working on it
            return bool(
                session.scalar(select(JobRecord.cancel_requested).where(JobRecord.id == job_id))
            )

    # ---------------------------------------------------------------- internals

    def _record(self, session: Session, job_id: str) -> JobRecord:
        """The worker's record for a terminal transition, row-locked and only if still ours."""
        attempt = self._held.get(job_id)
        if attempt is not None:
            locked = self._fence(session, job_id, attempt).values(
                progress_stage=JobRecord.progress_stage
            )
            if _rowcount(session.execute(locked)) != 1:
                raise ClaimLost(f"job {job_id}: attempt {attempt} was taken over")
        return super()._record(session, job_id)

    def _fence(self, session: Session, job_id: str, attempt: int) -> Any:
        return update(JobRecord).where(
            JobRecord.id == job_id,
            JobRecord.status == JobStatus.PROCESSING.value,
            JobRecord.attempt == attempt,
        )

    def _holder_alive(self, session: Session, job_id: str, worker_id: str, now: datetime) -> bool:
        claim = session.get(ClaimRecord, job_id)
        if claim is None or claim.worker_id == worker_id:
            return False
        # Alive: heartbeating, or claimed so recently that it may not have beaten yet.
        holder = session.get(WorkerRecord, claim.worker_id)
        last_sign = max(claim.claimed_at, holder.last_seen) if holder else claim.claimed_at
        return now - last_sign < timedelta(seconds=self.settings.heartbeat_timeout_s)

    def _after_terminal(self, view: JobView) -> None:
        if self.role == "worker":
            # Workers record; API nodes deliver webhooks (they hold the flavours' renderers).
            view = dataclasses.replace(view, webhook_url=None)
        super()._after_terminal(view)

    def _deliver_webhook(self, job_id: str) -> None:
        with self.store.session() as session:
            claimed = (
                update(JobRecord)
                .where(
                    JobRecord.id == job_id,
                    JobRecord.webhook_state == "pending",
                    JobRecord.status.in_(_TERMINAL),
                )
                .values(webhook_state="sending")
            )
            if _rowcount(session.execute(claimed)) != 1:
                return
            record = session.get(JobRecord, job_id)
            assert record is not None and record.webhook_url is not None
            session.refresh(record)
            view = self._view(record)
            url = record.webhook_url
        try:
            render = self._renderers.get(view.flavour, to_native_dict)
            body = json.dumps(render(view), separators=(",", ":")).encode()
            delivered = self.webhooks.deliver(url, view.id, body)
        except Exception:
            logger.exception("job %s: webhook rendering or delivery crashed", job_id)
            delivered = False
        with self.store.session() as session:
            session.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id)
                .values(webhook_state="delivered" if delivered else "failed")
            )
        logger.info("job %s: webhook %s", job_id, "delivered" if delivered else "given up")

    def deliver_pending_webhooks(self) -> int:
        with self.store.session() as session:
            ids = builtins.list(
                session.scalars(
                    select(JobRecord.id).where(
                        JobRecord.webhook_state == "pending", JobRecord.status.in_(_TERMINAL)
                    )
                ).all()
            )
        for job_id in ids:
            self._webhook_pool.submit(self._deliver_webhook, job_id)
        return len(ids)

    def _sessions(self) -> Any:
        return _GuardedSession(self.store)

    def _guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except DBAPIError as exc:
            if not _is_outage(exc):
                raise
            logger.warning("database unavailable: %s", exc.orig)
            raise ServiceUnavailable("the job database is unavailable; retry shortly") from exc


class _GuardedSession:
    """`store.session()` whose connection errors surface as ServiceUnavailable."""

    def __init__(self, store: JobStore) -> None:
        self._context = store.session()

    def __enter__(self) -> Session:
        try:
            return self._context.__enter__()
        except DBAPIError as exc:
            raise ServiceUnavailable("the job database is unavailable; retry shortly") from exc

    def __exit__(self, *exc_info: Any) -> bool | None:
        try:
            return self._context.__exit__(*exc_info)
        except DBAPIError as exc:
            if not _is_outage(exc):
                raise
            raise ServiceUnavailable("the job database is unavailable; retry shortly") from exc


def _open_store(url: str, tries: int = 5) -> JobStore:
    """The job store with this mode's tables. Processes of a new fleet start together, and
    concurrent CREATE TABLEs on one PostgreSQL database can fail: the loser tries again."""
    for attempt in range(1, tries + 1):
        try:
            store = JobStore(url)
            create_tables(store.engine)
            return store
        except DBAPIError:
            if attempt == tries:
                raise
            logger.warning("creating the job tables raced another process; retrying")
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


class _FleetCollector(Collector):
    """Autoscaling signals: live workers, their busy ratio, and broker queue lengths."""

    def __init__(self, service: SharedJobService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        try:
            workers = self._service.live_workers()
        except Exception:
            logger.warning("fleet metrics: database unavailable")
            return
        live = GaugeMetricFamily(
            "stepedit_workers", "Workers with a recent heartbeat", labels=["model_version"]
        )
        busy = GaugeMetricFamily(
            "stepedit_worker_busy_ratio",
            "Share of recent time each worker spent running jobs (moving average)",
            labels=["worker", "model_version"],
        )
        fleet = GaugeMetricFamily(
            "stepedit_fleet_busy_ratio",
            "Mean busy ratio of the live workers of a model version",
            labels=["model_version"],
        )
        by_version: dict[str, list[float]] = {}
        for worker in workers:
            busy.add_metric([worker.id, worker.model_version], worker.busy_ratio)
            by_version.setdefault(worker.model_version, []).append(worker.busy_ratio)
        for version, ratios in sorted(by_version.items()):
            live.add_metric([version], len(ratios))
            fleet.add_metric([version], sum(ratios) / len(ratios))
        yield live
        yield busy
        yield fleet
        dispatcher = self._service.dispatcher
        if isinstance(dispatcher, CeleryDispatcher):
            try:
                lengths = dispatcher.queue_lengths()
            except Exception:
                logger.warning("fleet metrics: broker unavailable")
                return
            queued = GaugeMetricFamily(
                "stepedit_broker_queue_length",
                "Tasks waiting in each model version's broker queue",
                labels=["queue"],
            )
            for queue, length in sorted(lengths.items()):
                queued.add_metric([queue], length)
            yield queued
