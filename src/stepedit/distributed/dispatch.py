"""The fleet's dispatchers (`stepedit.jobs.dispatch.Dispatcher`).

`CeleryDispatcher` (API nodes) turns an accepted or re-queued job into a Celery task on its
model version's queue. The API node imports this module, never `tasks` (which loads the
engine): tasks are sent by name. A job is committed to PostgreSQL before it is dispatched, so a
failed or lost dispatch loses nothing; the sweeper re-sends it.

`NoDispatcher` (workers) sends nothing.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery

from stepedit.distributed.celery_app import (
    DEFAULT_PRIORITY,
    HIGHEST_PRIORITY,
    QUEUE_PREFIX,
    TASK_NAME,
    make_celery,
    named_version,
    queue_for,
)
from stepedit.distributed.config import DistributedSettings, ModelVersion
from stepedit.errors import ServiceUnavailable
from stepedit.request import EditRequest

logger = logging.getLogger(__name__)

# Flavours whose caller holds the HTTP request open until the edit is done go first; the
# asynchronous ones (webhook or polling) can wait behind them.
INTERACTIVE_FLAVOURS = frozenset({"openai_edits", "generations", "reasoning"})
_JOB_ID = re.compile(rb"[0-9a-f]{32}")
_UNACKED_KEY = "unacked"  # kombu's Redis transport keeps delivered, unacked messages here


def priority_for(flavour: str) -> int:
    """Redis/kombu order: 0 is served first."""
    return HIGHEST_PRIORITY if flavour in INTERACTIVE_FLAVOURS else DEFAULT_PRIORITY


def version_for(request: EditRequest, default: ModelVersion) -> str:
    """The version a request names; else v1.2 for the reasoning passes only it has; else default."""
    named = named_version(request.model)
    if named:
        return named
    if request.enable_thinking or request.enable_reflection:
        return "v1.2"
    return default


class CeleryDispatcher:
    def __init__(self, settings: DistributedSettings, app: Celery | None = None) -> None:
        assert settings.queue_url is not None
        self.settings = settings
        self.app = app or make_celery(settings)
        self.redis = redis.Redis.from_url(
            settings.queue_url,
            socket_connect_timeout=settings.broker_timeout_s,
            socket_timeout=settings.broker_timeout_s,
        )

    def queue_for_request(self, request: EditRequest) -> str:
        return queue_for(self.version_for(request))

    def version_for(self, request: EditRequest) -> str:
        return version_for(request, self.settings.default_model_version)

    def wait_for_work(self, timeout_s: float) -> None:
        """Nothing to wait for here: the broker hands jobs to the workers."""

    def check_available(self) -> None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable("the job queue is unavailable; retry shortly") from exc

    def dispatch(self, job_id: str, request: EditRequest, flavour: str) -> None:
        queue = self.queue_for_request(request)
        priority = priority_for(flavour)
        try:
            self.app.send_task(
                TASK_NAME,
                args=[job_id],
                queue=queue,
                priority=priority,
                # The job id leads the task id so the sweeper can find a job's messages.
                task_id=f"{job_id}-{uuid.uuid4().hex[:8]}",
            )
        except Exception as exc:  # kombu raises transport-specific errors
            raise ServiceUnavailable("the job queue is unavailable; retry shortly") from exc
        logger.info("job %s: dispatched to %s (priority %d)", job_id, queue, priority)

    # ---------------------------------------------------------------- broker inspection (sweeper)

    def queue_lengths(self) -> dict[str, int]:
        """Messages waiting per queue (all priority levels together)."""
        lengths: dict[str, int] = {}
        for key in self._queue_keys():
            queue = key.split(":", 1)[0]
            lengths[queue] = lengths.get(queue, 0) + int(self.redis.llen(key))
        return lengths

    def job_ids_in_broker(self) -> set[str]:
        """Jobs with a message waiting in a queue or delivered and not yet acknowledged."""
        found: set[str] = set()
        raw: list[Any] = []
        for key in self._queue_keys():
            raw.extend(self.redis.lrange(key, 0, -1))
        unacked: Mapping[Any, Any] = self.redis.hgetall(_UNACKED_KEY)
        raw.extend(unacked.values())
        for message in raw:
            found.update(m.decode() for m in _JOB_ID.findall(message))
        return found

    def _queue_keys(self) -> list[str]:
        keys = []
        for key in self.redis.scan_iter(match=f"{QUEUE_PREFIX}*", count=200):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if self.redis.type(name) in (b"list", "list"):
                keys.append(name)
        return keys


class NoDispatcher:
    """A fleet worker's: the broker hands it jobs and it sends none. A job it re-queues (taking
    over a dead worker's) it claims at once; one left queued is the API nodes' sweeper's."""

    def check_available(self) -> None:
        raise ServiceUnavailable("a worker does not accept jobs")

    def dispatch(self, job_id: str, request: EditRequest, flavour: str) -> None:
        pass

    def wait_for_work(self, timeout_s: float) -> None:
        pass

    def version_for(self, request: EditRequest) -> str | None:
        return None
