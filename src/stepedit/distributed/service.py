"""The fleet's `JobService`: the same service as on one machine, built from the fleet's parts.

    part         API node                            worker
    store        JobStore on PostgreSQL (+ workers)  the same
    dispatcher   CeleryDispatcher                    NoDispatcher (the broker feeds it)
    storage      a shared mount, or ObjectStorage    the same
    outbox       WebhookOutbox (delivers)            DeferredOutbox (API nodes deliver)
    health       FleetHealth (database, broker)      ModelHealth (its model)

What makes many processes safe is already in the shared service: every status write is a
conditional UPDATE on (status, attempt), so two workers handed the same job (a redelivered
message) cannot both run the same attempt, and a worker whose job was taken over cannot record
a result; a webhook is claimed (pending -> sending) before it is sent, so it fires once however
many API nodes sweep; a database that does not answer is ServiceUnavailable (503).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError

from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.dispatch import CeleryDispatcher, NoDispatcher
from stepedit.distributed.heartbeat import live_workers, workers_loras
from stepedit.distributed.schema import create_tables
from stepedit.distributed.storage import storage_from_settings
from stepedit.errors import ServiceUnavailable
from stepedit.jobs.dispatch import Dispatcher
from stepedit.jobs.health import (
    Health,
    HealthCheck,
    HealthStatus,
    LoadedLora,
    ModelHealth,
    declared_version,
)
from stepedit.jobs.models import utcnow
from stepedit.jobs.outbox import DeferredOutbox, Outbox
from stepedit.jobs.service import JobService, outbox_from_settings
from stepedit.jobs.store import JobStore

logger = logging.getLogger(__name__)

Role = Literal["api", "worker"]


def fleet_service(
    settings: DistributedSettings, *, role: Role, dispatcher: Dispatcher | None = None
) -> JobService:
    """The `JobService` of an API node (`dispatcher`: default Celery on `settings.queue_url`)
    or of a worker."""
    store = open_store(settings)
    outbox: Outbox
    health: HealthCheck
    if role == "api":
        dispatcher = dispatcher or CeleryDispatcher(settings)
        # Workers' jobs become due in the shared database: look every sweep interval (the
        # sweeper also wakes it), taking entries by their due time.
        outbox = outbox_from_settings(store, settings, recheck_s=settings.sweep_interval_s)
        health = FleetHealth(store, dispatcher, settings.heartbeat_timeout_s)
    else:
        dispatcher = dispatcher or NoDispatcher()
        outbox = DeferredOutbox()
        health = ModelHealth(declared_version(settings))
    service = JobService(
        settings,
        store=store,
        dispatcher=dispatcher,
        storage=storage_from_settings(settings),
        outbox=outbox,
        health=health,
    )
    if role == "api":
        service.metrics.registry.register(
            FleetCollector(store, dispatcher, settings.heartbeat_timeout_s)
        )
    return service


def open_store(settings: DistributedSettings, tries: int = 5) -> JobStore:
    """The job store with this mode's tables. Processes of a new fleet start together, and
    concurrent CREATE TABLEs on one PostgreSQL database can fail: the loser tries again."""
    for attempt in range(1, tries + 1):
        try:
            store = JobStore(settings.resolved_database_url, base_url=settings.base_url)
            create_tables(store.engine)
            return store
        except DBAPIError:
            if attempt == tries:
                raise
            logger.warning("creating the job tables raced another process; retrying")
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


class FleetHealth:
    """An API node's health: ready while the database and the broker answer; lists the workers
    seen through heartbeats."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, heartbeat_timeout_s: float) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.heartbeat_timeout_s = heartbeat_timeout_s

    @property
    def model_version(self) -> str | None:
        return None  # each request is routed to its version's workers

    def raise_if_failed(self) -> None:
        pass  # an outage shows in the submission itself (broker check, database write)

    def loaded_loras(self) -> tuple[LoadedLora, ...] | None:
        """The adapters the live workers report in their heartbeats (None while none is live).
        A request routed to a worker that lacks one it names fails there, as invalid input."""
        workers = live_workers(self.store, self.heartbeat_timeout_s)
        return workers_loras(workers) if workers else None

    def health(self) -> Health:
        try:
            self.store.ping()
        except ServiceUnavailable as exc:
            return Health(HealthStatus.UNAVAILABLE, exc.message, details={"database": "down"})
        try:
            self.dispatcher.check_available()
        except ServiceUnavailable as exc:
            down = {"database": "ok", "broker": "down"}
            return Health(HealthStatus.UNAVAILABLE, exc.message, details=down)
        try:
            workers = live_workers(self.store, self.heartbeat_timeout_s)
        except ServiceUnavailable as exc:
            return Health(HealthStatus.UNAVAILABLE, exc.message, details={"database": "down"})
        now = utcnow()
        listed = [
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
        ]
        details: dict[str, Any] = {"database": "ok", "broker": "ok", "workers": listed}
        return Health(HealthStatus.READY, details=details)


class FleetCollector(Collector):
    """Autoscaling signals: live workers, their busy ratio, and broker queue lengths."""

    def __init__(self, store: JobStore, dispatcher: Dispatcher, heartbeat_timeout_s: float) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.heartbeat_timeout_s = heartbeat_timeout_s

    def collect(self) -> Iterator[Metric]:
        try:
            workers = live_workers(self.store, self.heartbeat_timeout_s)
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
        if isinstance(self.dispatcher, CeleryDispatcher):
            try:
                lengths = self.dispatcher.queue_lengths()
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
