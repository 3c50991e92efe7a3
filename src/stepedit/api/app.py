"""`create_app`: one FastAPI application serving every API flavour over one `JobService`.

The app never loads the model: the worker (started by `stepedit serve`) does, and moves the
service's health (loading, ready, failed), which `/health` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from stepedit import __version__
from stepedit.api import generations, native, openai_edits, ops, reasoning, wavespeed
from stepedit.api.access import AccessLog
from stepedit.api.deps import Jobs
from stepedit.api.flavours import Flavour, FlavourRegistry, install_error_handlers
from stepedit.api.limits import BodySizeLimit, body_limit_for
from stepedit.api.playground import Playground
from stepedit.errors import NotFound
from stepedit.jobs.service import JobService
from stepedit.jobs.storage import MEDIA_TYPES
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

# Every API flavour: a folder (protocol, adapter, router, errors) and a line here.
FLAVOURS: tuple[Flavour, ...] = (
    wavespeed.FLAVOUR,
    openai_edits.FLAVOUR,
    generations.FLAVOUR,
    reasoning.FLAVOUR,
    native.FLAVOUR,
)
# Errors on paths outside every flavour's prefix (/health, /files, unknown paths) take its shape.
FALLBACK = native.FLAVOUR
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
FILES_ROUTE = "/files/{filename}"  # its path is a secret: logged as the route
OUTPUT_MEDIA_TYPES = tuple(sorted(set(MEDIA_TYPES.values())))
_BINARY = {"type": "string", "format": "binary"}


def create_app(settings: Settings, job_service: JobService) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        cleanup = asyncio.create_task(_clean_periodically(job_service, settings))
        try:
            yield
        finally:
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup

    app = FastAPI(
        title="stepedit",
        version=__version__,
        description="Step1X-Edit image editing behind the wavespeed, OpenAI-edits, "
        "generations and reasoning-edit APIs, plus a native job API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.job_service = job_service
    flavours = FlavourRegistry(FLAVOURS, fallback=FALLBACK)
    install_error_handlers(app, flavours)
    app.add_middleware(BodySizeLimit, max_body_bytes=body_limit_for(settings.max_upload_bytes))
    ops.instrument_http(app, job_service.metrics.registry)  # every answer counted
    # outermost: every answer carries the request id and is logged
    app.add_middleware(AccessLog, redacted_routes=[FILES_ROUTE])

    app.include_router(ops.router)
    for flavour in flavours:
        app.include_router(flavour.router)
        if flavour.webhook_renderer is not None:
            renderer = flavour.webhook_renderer(settings.base_url)
            job_service.register_webhook_renderer(flavour.name, renderer)

    @app.get(
        FILES_ROUTE,
        tags=["files"],
        summary="An output image (unguessable URL)",
        response_class=FileResponse,
        responses={
            200: {"content": {t: {"schema": _BINARY} for t in OUTPUT_MEDIA_TYPES}},
            **FALLBACK.errors.responses(404),
        },
    )
    def get_file(filename: str, jobs: Jobs) -> FileResponse:
        token, _, extension = filename.partition(".")
        path = jobs.output_path(token)
        if extension and path.suffix != f".{extension}":
            raise NotFound("no such file")
        return FileResponse(
            path,
            media_type=MEDIA_TYPES.get(path.suffix.lstrip("."), "application/octet-stream"),
            headers={"Cache-Control": "private, max-age=86400"},
        )

    playground = Playground(app.router, flavours, WEB_DIR if WEB_DIR.is_dir() else None)
    app.mount("/", playground, name="playground")  # last: after every API route
    return app


async def _clean_periodically(job_service: JobService, settings: Settings) -> None:
    while True:
        try:
            await asyncio.to_thread(job_service.cleanup_expired)
        except Exception:
            logger.exception("output cleanup failed; retrying at the next interval")
        await asyncio.sleep(settings.cleanup_interval_s)
