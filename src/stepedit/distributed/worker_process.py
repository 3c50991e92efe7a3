"""One worker process: load the model once, heartbeat, consume one queue with the solo pool.

The solo pool runs each task in this process's main thread, so the model loaded here is the one
every job uses, and exactly one job runs at a time. A model that cannot be loaded ends the
process with an error (exit status 1) before it heartbeats or consumes anything: no job is
routed to it, and its supervisor can restart it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.signals import worker_shutting_down

from stepedit.distributed.celery_app import make_celery, queue_for, version_of
from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.heartbeat import BusyClock, Heartbeat, new_worker_id
from stepedit.distributed.service import fleet_service
from stepedit.distributed.tasks import TimedEditor, WorkerRuntime, register_task
from stepedit.engine import load_editor, load_safety_checker
from stepedit.engine.editor import Editor, loaded_facts
from stepedit.jobs.health import describe_failure

logger = logging.getLogger(__name__)


def served_version(settings: DistributedSettings, editor: Editor) -> str:
    """--model-version, else what the loaded model says, else the model source's name."""
    if settings.model_version:
        return settings.model_version
    detected = getattr(editor, "model_version", None)
    if isinstance(detected, str):
        return detected
    return version_of(settings.model, settings.default_model_version)


def run_worker(
    settings: DistributedSettings,
    *,
    load: Callable[[DistributedSettings], Editor] = load_editor,
    device_label: str | None = None,
) -> int:
    """`load` builds the editor (`engine.multi_gpu`: a CFG pair); `device_label` is the device
    the heartbeats name (default: --device)."""
    service = fleet_service(settings, role="worker")
    worker_id = new_worker_id()
    logger.info("worker %s: loading %s", worker_id, settings.model)
    try:
        editor = load(settings)
        safety = load_safety_checker(settings.safety_checker)
    except Exception as exc:
        service.model.failed(describe_failure(exc))
        logger.exception("worker %s: the model could not be loaded; exiting", worker_id)
        service.close()
        return 1
    version = served_version(settings, editor)
    facts = loaded_facts(editor)[1]
    service.model.loaded(version, facts)
    queue = queue_for(version)
    clock = BusyClock()
    runtime = WorkerRuntime(
        service=service,
        editor=TimedEditor(editor, settings.job_timeout_s),
        worker_id=worker_id,
        clock=clock,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        safety=safety,
        nsfw_filter=settings.nsfw_filter,
    )
    heartbeat = Heartbeat(
        service.store,
        worker_id=worker_id,
        model_version=version,
        queue=queue,
        device=device_label or settings.device or "auto",
        interval_s=settings.heartbeat_interval_s,
        clock=clock,
        loras=facts.loras,  # API nodes list them (GET /v1/loras) and check requests against them
    )
    app = make_celery(settings)
    register_task(app, runtime)

    def on_shutdown(**_kwargs: object) -> None:
        # SIGTERM (Celery's warm shutdown): the running job gets the grace to finish, and is
        # handed back to the broker otherwise.
        runtime.begin_shutdown(settings.shutdown_grace_s)

    worker_shutting_down.connect(on_shutdown, weak=False)
    heartbeat.start()
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
        service.model.stopped()
        heartbeat.stop()
        close_editor(editor)
        service.close()
    return 0


def close_editor(editor: Editor) -> None:
    """Stop what the editor runs beside this process (a CFG pair's follower), here rather than
    at exit: multiprocessing's exit handler, which joins child processes, may run first."""
    close = getattr(editor, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.exception("the editor did not close cleanly")
