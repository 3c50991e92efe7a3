"""`create_app`: one FastAPI application serving every API flavour over one `JobService`.

The app never loads the model: the worker (started by `stepedit serve`) does, and flips
`JobService.is_ready`, which `/health` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from stepedit import __version__
from stepedit.api import ops
from stepedit.api.deps import Jobs
from stepedit.api.errors import install_error_handlers
from stepedit.api.native.router import router as native_router
from stepedit.errors import NotFound
from stepedit.jobs.service import JobService
from stepedit.jobs.storage import MEDIA_TYPES
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

# Each package exposes `router` in `<package>/router.py`, and optionally, there or in
# `<package>/adapter.py`, `webhook_renderer(base_url) -> (JobView -> dict)`: the body POSTed to
# the webhooks of that flavour's jobs (default: the native JobView).
FLAVOUR_PACKAGES = ("wavespeed", "openai_edits", "generations", "reasoning")
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

    app.include_router(ops.router)
    app.include_router(native_router)
    for name in FLAVOUR_PACKAGES:
        _include_flavour(app, name, settings, job_service)

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


def _include_flavour(app: FastAPI, name: str, settings: Settings, jobs: JobService) -> None:
    package = f"stepedit.api.{name}"
    try:
        router_module = importlib.import_module(f"{package}.router")
    except ModuleNotFoundError as exc:
        # Guard while the flavour packages are being written; any other import error is a bug.
        if exc.name not in (package, f"{package}.router"):
            raise
        logger.warning("API flavour %s not installed (no %s.router)", name, package)
        return
    app.include_router(router_module.router)
    for module_name in ("router", "adapter"):
        try:
            module = importlib.import_module(f"{package}.{module_name}")
        except ModuleNotFoundError:
            continue
        factory = getattr(module, "webhook_renderer", None)
        if factory is not None:
            jobs.register_webhook_renderer(name, factory(settings.base_url))
            break


async def _clean_periodically(job_service: JobService, settings: Settings) -> None:
    while True:
        try:
            await asyncio.to_thread(job_service.cleanup_expired)
        except Exception:
            logger.exception("output cleanup failed; retrying at the next interval")
        await asyncio.sleep(settings.cleanup_interval_s)
