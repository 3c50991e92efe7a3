"""Worker heartbeats: a thread that refreshes the worker's row every few seconds.

The row says which job the worker runs and how busy it has been (an exponential moving average
over about a minute), which is what API nodes report on /health and /metrics and what the
sweeper uses to tell a dead worker's job from a slow one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import delete

from stepedit.distributed.schema import WorkerRecord
from stepedit.jobs.models import utcnow
from stepedit.jobs.store import JobStore

logger = logging.getLogger(__name__)

BUSY_WINDOW_S = 60.0


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
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.model_version = model_version
        self.queue = queue
        self.device = device
        self.interval_s = interval_s
        self.clock = clock
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
                )
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # the database may be briefly down; keep trying
                logger.warning("heartbeat failed: %s", exc)
