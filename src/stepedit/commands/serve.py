"""`stepedit serve`: the HTTP server.

- Single machine (default): an in-process worker. Zero set-up: `stepedit serve --model
  dummy:tiny-v1.1` keeps jobs in SQLite and images on disk under ./data. `/health` turns 200
  once the worker has loaded the model, and says "failed" (with the reason) if it cannot.
- `--gpus 0,1 [--parallel replicas|cfg]`: one worker per GPU, or each edit across two GPUs
  (`stepedit.engine.multi_gpu`, docs/performance.md "Several GPUs").
- `--queue-url redis://... --database-url postgresql+psycopg://...`: an API node of a worker
  fleet, with no model and no worker of its own (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Protocol

from stepedit.commands._model_arguments import (
    MODEL_SETTING_NAMES,
    add_device_arguments,
    add_model_arguments,
)
from stepedit.gpus import GpuChoiceError, GpuPlan, check_plan_model, plan_from_args

logger = logging.getLogger(__name__)

_SETTING_NAMES = (
    *MODEL_SETTING_NAMES,
    "host",
    "port",
    "data_dir",
    "database_url",
    "public_base_url",
    "optimize",
    "max_queue",
    "api_keys",
    "safety_checker",
)


class Background(Protocol):
    """What runs beside the HTTP server: the in-process worker, or a fleet node's sweeper."""

    def start(self) -> None: ...

    def begin_stop(self) -> None:
        """SIGTERM: take no new work (what runs goes on until `stop`)."""
        ...

    def stop(self) -> None: ...


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve every API flavour over one job queue and an in-process worker"
    )
    add_model_arguments(parser)
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--data-dir", type=Path, help="jobs database and images (default ./data)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in --data-dir)")
    parser.add_argument(  # the older spelling, still accepted
        "--db", dest="database_url", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--queue-url",
        help="broker URL (redis://...): run as an API node of a worker fleet, without a model "
        "or an in-process worker (docs/deployment.md)",
    )
    parser.add_argument(  # the older spelling, still accepted
        "--queue", dest="queue_url", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--public-base-url",
        help="origin used in output URLs (default http://HOST:PORT; set it when clients reach "
        "the server under another name, e.g. behind a proxy or with --host 0.0.0.0)",
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--optimize",
        help='speed switches: "auto" (default: exact on CUDA, as loaded on CPU), "plain", "exact", '
        '"fast", "24gb", or a preset with +/- switches (docs/performance.md)',
    )
    parser.add_argument("--max-queue", type=int, help="queued jobs before 'busy' (default 32)")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help="accepted Bearer key (repeatable)"
    )
    parser.add_argument(
        "--no-safety-checker", dest="safety_checker", action="store_false", default=None
    )
    parser.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line sets (the rest come from STEPEDIT_* and defaults)."""
    return {name: getattr(args, name) for name in _SETTING_NAMES if getattr(args, name) is not None}


def settings_from_args(args: argparse.Namespace) -> Any:
    from stepedit.settings import Settings

    return Settings(**overrides_from_args(args))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM. Then: no new jobs (503), synchronous waits answered at once (503,
    their jobs kept), in-flight requests drained (`http_drain_s`), the running edit given
    `shutdown_grace_s` to finish and otherwise handed back to the queue without counting an
    attempt; then exit."""
    from pydantic import ValidationError

    from stepedit.jobs.storage import DataDirError
    from stepedit.server import serve

    try:
        plan = plan_from_args(args)  # a bad --gpus is refused before anything loads
        if getattr(args, "queue_url", None):
            if plan is not None:
                raise GpuChoiceError("--gpus runs models: an API node (--queue-url) runs none")
            app, service, background = _api_node(args)
        else:
            settings = settings_from_args(args)
            if not settings.model:
                logger.error("no model: pass --model (a checkpoint directory or dummy:tiny-v1.1)")
                return 2
            check_plan_model(plan, settings.model)
            app, service, background = _single_machine(settings, plan)
    except GpuChoiceError as exc:
        logger.error("%s", exc)
        return 2
    except ValidationError as exc:
        logger.error("invalid setting: %s", exc)
        return 2
    except DataDirError as exc:
        logger.error("%s", exc)
        return 2
    log_addresses(service.settings)
    background.start()
    try:
        serve(
            app,
            service.settings,
            on_shutdown=[service.begin_shutdown, background.begin_stop],
            after_drain=[background.stop, service.close],
        )
    finally:  # an exit without a signal; both are idempotent
        background.stop()
        service.close()
    return 0


def log_addresses(settings: Any) -> None:
    """Where a person finds the server (full URLs), and that a `dummy:` model's edits are
    noise, so a first try with it is not mistaken for a broken model."""
    logger.info("playground: %s/  API docs: %s/docs", settings.base_url, settings.base_url)
    if (settings.model or "").startswith("dummy:"):
        logger.warning(
            "%s has random weights: every edit comes out as noise (for trying the server; "
            "pass --model with real weights, docs/weights.md)",
            settings.model,
        )


def _single_machine(settings: Any, plan: GpuPlan | None = None) -> tuple[Any, Any, Background]:
    from stepedit.api.app import create_app
    from stepedit.engine import InProcessWorker, load_editor, load_safety_checker
    from stepedit.jobs.service import JobService

    service = JobService(settings)
    service.recover()
    if plan is not None:
        from stepedit.engine.multi_gpu import MultiGpuWorkers

        load_safety = lambda: load_safety_checker(settings.safety_checker)  # noqa: E731
        workers = MultiGpuWorkers(service, settings, plan, load_safety=load_safety)
        return create_app(settings, service), service, workers
    worker = InProcessWorker(
        service,
        lambda: load_editor(settings),
        load_safety=lambda: load_safety_checker(settings.safety_checker),
        nsfw_filter=settings.nsfw_filter,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    return create_app(settings, service), service, worker


def _api_node(args: argparse.Namespace) -> tuple[Any, Any, Background]:
    from stepedit.distributed.api_node import create_api_node
    from stepedit.distributed.config import DistributedSettings

    settings = DistributedSettings(**overrides_from_args(args), queue_url=args.queue_url)
    logger.info("API node on %s:%d, broker %s", settings.host, settings.port, settings.queue_url)
    return create_api_node(settings)
