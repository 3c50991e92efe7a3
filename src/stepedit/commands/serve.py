"""`stepedit serve`: the HTTP server with an in-process worker (single-machine mode).

Zero set-up: `stepedit serve --model dummy:tiny-v1.1` keeps jobs in SQLite and images on disk
under ./data. `/health` turns 200 once the worker has loaded the model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve every API flavour over one job queue and an in-process worker"
    )
    parser.add_argument("--model", help='checkpoint directory or "dummy:<preset>" (STEPEDIT_MODEL)')
    parser.add_argument("--model-version", choices=["v1.0", "v1.1", "v1.2"])
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--data-dir", type=Path, help="jobs database and images (default ./data)")
    parser.add_argument(
        "--database-url", "--db", help="SQLAlchemy URL (default: SQLite in --data-dir)"
    )
    parser.add_argument(
        "--queue",
        dest="queue_url",
        help="broker URL (redis://...): run as an API node of a worker fleet, without a model "
        "or an in-process worker (docs/deployment.md)",
    )
    parser.add_argument(
        "--public-base-url",
        help="origin used in output URLs (default http://HOST:PORT; set it when clients reach "
        "the server under another name, e.g. behind a proxy or with --host 0.0.0.0)",
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    parser.add_argument("--dtype", help="bf16, fp16 or fp32 (default: the pipeline's choice)")
    parser.add_argument("--offload", action="store_true", default=None, help="CPU offload")
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


def settings_from_args(args: argparse.Namespace) -> Any:
    from stepedit.settings import Settings

    names = (
        "model",
        "model_version",
        "host",
        "port",
        "data_dir",
        "database_url",
        "public_base_url",
        "device",
        "dtype",
        "offload",
        "optimize",
        "max_queue",
        "api_keys",
        "safety_checker",
    )
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from stepedit.api.app import create_app
    from stepedit.engine import InProcessWorker, load_editor, load_safety_checker
    from stepedit.jobs.service import JobService

    if getattr(args, "queue_url", None):
        from stepedit.distributed.api_node import run_from_args

        return run_from_args(args)
    settings = settings_from_args(args)
    if not settings.model:
        logger.error("no model: pass --model (a checkpoint directory or dummy:tiny-v1.1)")
        return 2
    service = JobService(settings)
    service.recover()
    worker = InProcessWorker(
        service,
        lambda: load_editor(settings),
        load_safety=lambda: load_safety_checker(settings.safety_checker),
        nsfw_filter=settings.nsfw_filter,
    )
    app = create_app(settings, service)
    worker.start()
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    finally:
        worker.stop()
        service.close()
    return 0
