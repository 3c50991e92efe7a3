"""One worker process: load the model once, heartbeat, consume one queue with the solo pool.

The solo pool runs each task in this process's main thread, so the model loaded here is the one
every job uses, and exactly one job runs at a time.
"""

from __future__ import annotations

import logging

from stepedit.distributed.celery_app import make_celery, queue_for, version_of
from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.heartbeat import BusyClock, Heartbeat, new_worker_id
from stepedit.distributed.service import SharedJobService
from stepedit.distributed.tasks import TimedEditor, WorkerRuntime, register_task
from stepedit.engine import load_editor, load_safety_checker
from stepedit.engine.editor import Editor

logger = logging.getLogger(__name__)


def served_version(settings: DistributedSettings, editor: Editor) -> str:
    """--model-version, else what the loaded model says, else the model source's name."""
    if settings.model_version:
        return settings.model_version
    detected = getattr(getattr(editor, "pipeline", None), "version", None)
    if isinstance(detected, str):
        return detected
    return version_of(settings.model, settings.default_model_version)


def run_worker(settings: DistributedSettings) -> int:
    service = SharedJobService(settings, role="worker")
    worker_id = new_worker_id()
    logger.info("worker %s: loading %s", worker_id, settings.model)
    editor = load_editor(settings)
    version = served_version(settings, editor)
    queue = queue_for(version)
    clock = BusyClock()
    runtime = WorkerRuntime(
        service=service,
        editor=TimedEditor(editor, settings.job_timeout_s),
        worker_id=worker_id,
        clock=clock,
        safety=load_safety_checker(settings.safety_checker),
        nsfw_filter=settings.nsfw_filter,
    )
    heartbeat = Heartbeat(
        service.store,
        worker_id=worker_id,
        model_version=version,
        queue=queue,
        device=settings.device or "auto",
        interval_s=settings.heartbeat_interval_s,
        clock=clock,
    )
    app = make_celery(settings)
    register_task(app, runtime)
    heartbeat.start()
    service.set_ready(True)
    logger.info("worker %s: model loaded; consuming %s", worker_id, queue)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "--prefetch-multiplier=1",
                f"--queues={queue}",
                f"--hostname={worker_id}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ]
        )
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        service.set_ready(False)
        heartbeat.stop()
        service.close()
    return 0
