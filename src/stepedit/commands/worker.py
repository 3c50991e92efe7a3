"""`stepedit worker`: one GPU worker of the scale-out mode (see docs/deployment.md).

Loads the model once, heartbeats into the shared database and consumes its model version's
Celery queue one job at a time. Run one per GPU (CUDA_VISIBLE_DEVICES or --device), or let
`--gpus 0,1` start one per GPU (`--parallel replicas`, the default) or run each job across two
(`--parallel cfg`): `stepedit.engine.multi_gpu`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from stepedit.commands._model_arguments import (
    MODEL_SETTING_NAMES,
    add_device_arguments,
    add_model_arguments,
)
from stepedit.gpus import GpuChoiceError, check_plan_model, plan_from_args

logger = logging.getLogger(__name__)

_SETTING_NAMES = (
    *MODEL_SETTING_NAMES,
    "optimize",
    "data_dir",
    "public_base_url",
    "safety_checker",
    "storage_url",
    "s3_endpoint_url",
    "job_timeout_s",
    "heartbeat_interval_s",
    "heartbeat_timeout_s",
    "visibility_timeout_s",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker", help="run one GPU worker that takes jobs from the shared queue"
    )
    parser.add_argument("--queue-url", help="broker URL, redis://host:6379/0")
    parser.add_argument(  # the older spelling, still accepted
        "--queue", dest="queue_url", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.add_argument("--database-url", help="job store, postgresql+psycopg://...")
    parser.add_argument(  # the older spelling, still accepted
        "--db", dest="database_url", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    add_model_arguments(
        parser, version_help="the queue to consume (default: detected from the model)"
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--optimize", help='speed switches, as for serve: "auto", "exact", "fast", "24gb", ...'
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (CPU workers)")
    parser.add_argument("--data-dir", type=Path, help="shared storage directory (or S3 cache)")
    parser.add_argument("--storage-url", help="s3://bucket/prefix for S3-compatible storage")
    parser.add_argument("--s3-endpoint-url", help="endpoint of a non-AWS S3 service")
    parser.add_argument("--public-base-url", help="the API nodes' public origin (output URLs)")
    parser.add_argument("--job-timeout", dest="job_timeout_s", type=float, help="seconds per job")
    parser.add_argument("--heartbeat-interval", dest="heartbeat_interval_s", type=float)
    parser.add_argument("--heartbeat-timeout", dest="heartbeat_timeout_s", type=float)
    parser.add_argument("--visibility-timeout", dest="visibility_timeout_s", type=float)
    parser.add_argument(
        "--no-safety-checker", dest="safety_checker", action="store_false", default=None
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepedit.distributed.config import DistributedSettings
    from stepedit.distributed.worker_process import run_worker

    names = (*_SETTING_NAMES, "queue_url", "database_url")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        plan = plan_from_args(args)  # a bad --gpus is refused before anything loads
        settings = DistributedSettings(**overrides)
        check_plan_model(plan, settings.model)
    except GpuChoiceError as exc:
        logger.error("%s", exc)
        return 2
    if not settings.queue_url or not settings.model:
        logger.error("a worker needs --queue-url (redis://...) and --model")
        return 2
    if plan is not None:
        from stepedit.engine.multi_gpu import run_gpu_workers

        return run_gpu_workers(settings, plan, args.threads)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return run_worker(settings)
