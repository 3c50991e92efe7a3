"""The Celery application shared by API nodes (which only send) and workers (which run).

Delivery guarantees come from three settings: a task is acknowledged only after it returns
(`task_acks_late`), a task whose worker process died is put back (`task_reject_on_worker_lost`),
and a worker reserves one message at a time (`worker_prefetch_multiplier=1` with one slot), so
queued jobs stay in the broker, visible to every idle worker, instead of in one worker's buffer.
"""

from __future__ import annotations

import re

from celery import Celery

from stepedit.distributed.config import DistributedSettings, ModelVersion

TASK_NAME = "stepedit.run_job"
QUEUE_PREFIX = "stepedit."
# Redis has no native priorities: kombu keeps one list per step and reads the lowest first.
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"
HIGHEST_PRIORITY = 0
DEFAULT_PRIORITY = 5

_VERSION = re.compile(r"v1\.[012]")


def queue_for(version: str) -> str:
    """`v1.2` -> `stepedit.v1.2`: one queue per model version; workers consume their own."""
    return f"{QUEUE_PREFIX}{version}"


def named_version(model: str | None) -> str | None:
    """The model version a request (or a model source) names, e.g. "step1x-edit-v1.2"."""
    found = _VERSION.search(model or "")
    return found.group(0) if found else None


def version_of(model: str | None, default: ModelVersion) -> str:
    return named_version(model) or default


def make_celery(settings: DistributedSettings) -> Celery:
    if not settings.queue_url:
        raise ValueError("no broker URL (--queue-url redis://... or STEPEDIT_QUEUE_URL)")
    app = Celery("stepedit", broker=settings.queue_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,  # results live in PostgreSQL, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue_for(settings.default_model_version),
        task_default_priority=DEFAULT_PRIORITY,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "queue_order_strategy": "priority",
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "socket_connect_timeout": settings.broker_timeout_s,
            "socket_timeout": max(settings.broker_timeout_s, 5.0),
        },
        broker_connection_timeout=settings.broker_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # workers ride out a broker outage
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
