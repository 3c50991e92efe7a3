"""Worker heartbeats: a thread that refreshes the worker's row every few seconds.

The row says which job the worker runs and how busy it has been (an exponential moving average
over about a minute), which is what API nodes report on /health and /metrics. With the job's
`worker_id` and `started_at` it tells a dead worker's job from a slow one (`lost_jobs`), for the
sweeper and for a worker handed a job that another worker holds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from stepedit.distributed.schema import WorkerRecord
from stepedit.jobs.health import LoadedLora
from stepedit.jobs.models import JobRecord, utcnow
from stepedit.jobs.state import JobStatus
from stepedit.jobs.store import JobStore

logger = logging.getLogger(__name__)

BUSY_WINDOW_S = 60.0
WORKER_LOST_MESSAGE = "the worker running this job stopped responding, on every attempt"


def new_worker_id() -> str:
    return f"{socket.gethostname()[:48]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class BusyClock:
    """Busy time of one worker, read as a moving-average ratio."""

    current_job: str | None = None
    jobs_done: int = 0
    ratio: float = 0.0
    _busy_since: float | None = None
    _busy_s: float = 0.0
    _last_sample: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._last_sample = time.monotonic()

    def start(self, job_id: str) -> None:
        with self._lock:
            self.current_job = job_id
            self._busy_since = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            if self._busy_since is not None:
                self._busy_s += time.monotonic() - self._busy_since
            self._busy_since = None
            self.current_job = None
            self.jobs_done += 1

    def sample(self) -> float:
        """Fold the time since the last sample into the moving average; returns it."""
        with self._lock:
            now = time.monotonic()
            if self._busy_since is not None:
                self._busy_s += now - self._busy_since
                self._busy_since = now
            elapsed = max(now - self._last_sample, 1e-6)
            busy_share = min(1.0, self._busy_s / elapsed)
            weight = min(1.0, elapsed / BUSY_WINDOW_S)
            self.ratio = (1 - weight) * self.ratio + weight * busy_share
            self._busy_s = 0.0
            self._last_sample = now
            return self.ratio


class Heartbeat:
    def __init__(
        self,
        store: JobStore,
        *,
        worker_id: str,
        model_version: str,
        queue: str,
        device: str,
        interval_s: float,
        clock: BusyClock,
        loras: Sequence[LoadedLora] = (),
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.model_version = model_version
        self.queue = queue
        self.device = device
        self.interval_s = interval_s
        self.clock = clock
        self.loras_json = json.dumps([lora.to_dict() for lora in loras])
        self._started_at = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepedit-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the row (a clean exit is not a dead worker)."""
        self._stop.set()
        self._thread.join(self.interval_s + 1)
        try:
            with self.store.session() as session:
                session.execute(delete(WorkerRecord).where(WorkerRecord.id == self.worker_id))
        except Exception:
            logger.warning("could not remove worker row %s", self.worker_id, exc_info=True)

    def beat(self) -> None:
        ratio = self.clock.sample()
        with self.store.session() as session:
            session.merge(
                WorkerRecord(
                    id=self.worker_id,
                    hostname=socket.gethostname()[:255],
                    pid=os.getpid(),
                    model_version=self.model_version,
                    queue=self.queue,
                    device=self.device[:32],
                    started_at=self._started_at,
                    last_seen=utcnow(),
                    current_job=self.clock.current_job,
                    busy_ratio=ratio,
                    jobs_done=self.clock.jobs_done,
                    loras_json=self.loras_json,
                )
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # the database may be briefly down; keep trying
                logger.warning("heartbeat failed: %s", exc)


def live_workers(store: JobStore, timeout_s: float) -> list[WorkerRecord]:
    """Workers that heartbeated within `timeout_s`."""
    since = utcnow() - timedelta(seconds=timeout_s)
    with store.session() as session:
        return list(
            session.scalars(
                select(WorkerRecord)
                .where(WorkerRecord.last_seen >= since)
                .order_by(WorkerRecord.id)
            ).all()
        )


def workers_loras(workers: Sequence[WorkerRecord]) -> tuple[LoadedLora, ...]:
    """The adapters `workers` preloaded, each name once (as the first of them reports it)."""
    found: dict[str, LoadedLora] = {}
    for worker in workers:
        for entry in json.loads(worker.loras_json or "[]"):
            found.setdefault(entry["name"], LoadedLora(**entry))
    return tuple(found.values())


def lost_jobs(
    store: JobStore, timeout_s: float, job_id: str | None = None
) -> list[tuple[str, int]]:
    """(id, attempt) of processing jobs (all, or just `job_id`) whose worker has shown no sign
    of life for `timeout_s`: no heartbeat, and claimed longer ago than that."""
    query = (
        select(JobRecord.id, JobRecord.attempt, JobRecord.started_at, WorkerRecord.last_seen)
        .outerjoin(WorkerRecord, WorkerRecord.id == JobRecord.worker_id)
        .where(JobRecord.status == JobStatus.PROCESSING.value)
    )
    if job_id is not None:
        query = query.where(JobRecord.id == job_id)
    with store.session() as session:
        rows = session.execute(query).all()
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    return [
        (found, int(attempt))
        for found, attempt, started_at, last_seen in rows
        if _last_sign_of_life(started_at, last_seen) < cutoff
    ]


def _last_sign_of_life(started_at: datetime | None, last_seen: datetime | None) -> datetime:
    """A worker may not have beaten yet right after its claim: the claim counts as a sign."""
    claimed = started_at or datetime.min.replace(tzinfo=UTC)
    return max(claimed, last_seen) if last_seen else claimed
