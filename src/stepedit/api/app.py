"""`create_app`: one FastAPI application serving every API flavour over one `JobService`.

The app never loads the model: the worker (started by `stepedit serve`) does, and flips
`JobService.is_ready`, which `/health` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from stepedit import __version__
from stepedit.api import ops
from stepedit.api.deps import Jobs
from stepedit.api.errors import install_error_handlers
from stepedit.api.generations import router as generations_router
from stepedit.api.limits import BodySizeLimit, body_limit_for
from stepedit.api.native.router import router as native_router
from stepedit.api.openai_edits import router as openai_edits_router
from stepedit.api.reasoning import router as reasoning_router
from stepedit.api.wavespeed import adapter as wavespeed_adapter
from stepedit.api.wavespeed import router as wavespeed_router
from stepedit.errors import NotFound
from stepedit.jobs.service import JobService
from stepedit.jobs.storage import MEDIA_TYPES
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

# One router per seed's API; each converts to and from the one EditRequest.
FLAVOUR_ROUTERS: tuple[tuple[str, APIRouter], ...] = (
    ("wavespeed", wavespeed_router.router),
    ("openai_edits", openai_edits_router.router),
    ("generations", generations_router.router),
    ("reasoning", reasoning_router.router),
)
# Webhook bodies per flavour (default: the native JobView). Only wavespeed takes webhooks.
WEBHOOK_RENDERERS = {"wavespeed": wavespeed_adapter.webhook_renderer}
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


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
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=body_limit_for(settings.max_upload_bytes))

    app.include_router(ops.router)
    app.include_router(native_router)
    for _name, router in FLAVOUR_ROUTERS:
        app.include_router(router)
    for name, renderer_for in WEBHOOK_RENDERERS.items():
        job_service.register_webhook_renderer(name, renderer_for(settings.base_url))

    @app.get("/files/{filename}", tags=["files"], summary="An output image (unguessable URL)")
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

    if WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="playground")
    return app


async def _clean_periodically(job_service: JobService, settings: Settings) -> None:
    while True:
        try:
            await asyncio.to_thread(job_service.cleanup_expired)
        except Exception:
            logger.exception("output cleanup failed; retrying at the next interval")
        await asyncio.sleep(settings.cleanup_interval_s)
