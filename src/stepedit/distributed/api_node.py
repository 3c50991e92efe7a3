"""An API node of the scale-out mode: every API flavour, no model, no torch, no worker.

Jobs are committed to the shared database and dispatched to Celery; the sweeper runs here.
`/health` answers 200 when the database and the broker answer, and lists the live workers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from stepedit.api.app import create_app
from stepedit.distributed.config import DistributedSettings
from stepedit.distributed.dispatch import CeleryDispatcher
from stepedit.distributed.service import SharedJobService
from stepedit.distributed.sweeper import Sweeper
from stepedit.errors import ServiceUnavailable

logger = logging.getLogger(__name__)


def create_api_node(settings: DistributedSettings) -> tuple[FastAPI, SharedJobService, Sweeper]:
    dispatcher = CeleryDispatcher(settings)
    service = SharedJobService(settings, role="api", dispatcher=dispatcher)
    app = create_app(settings, service)
    _replace_health(app, service)
    return app, service, Sweeper(service, dispatcher)


def _replace_health(app: FastAPI, service: SharedJobService) -> None:
    async def health() -> JSONResponse:
        try:
            body = await asyncio.to_thread(service.health)
        except ServiceUnavailable as exc:
            return JSONResponse({"status": "unavailable", "reason": exc.message}, status_code=503)
        return JSONResponse(body)

    route = APIRoute(
        "/health",
        health,
        methods=["GET"],
        tags=["ops"],
        summary="Ready when the database and the broker answer; lists live workers",
    )
    routes = app.router.routes
    for index, existing in enumerate(routes):
        if isinstance(existing, APIRoute) and existing.path == "/health":
            routes[index] = route
            return
    routes.insert(0, route)


def run_from_args(args: argparse.Namespace) -> int:
    """`stepedit serve --queue ... --db ...`: the serve options, plus the broker URL."""
    from stepedit.commands.serve import settings_from_args

    overrides = settings_from_args(args).model_dump(exclude_unset=True)
    settings = DistributedSettings(**overrides, queue_url=args.queue_url)
    return run_api_node(settings)


def run_api_node(settings: DistributedSettings) -> int:
    import uvicorn

    app, service, sweeper = create_api_node(settings)
    sweeper.start()
    logger.info("API node on %s:%d, broker %s", settings.host, settings.port, settings.queue_url)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    finally:
        sweeper.stop()
        service.close()
    return 0
