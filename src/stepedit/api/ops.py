"""Operational endpoints: readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stepedit.api.deps import AppSettings, Jobs
from stepedit.settings import Settings

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Ready only once the model is loaded")
def health(jobs: Jobs, settings: AppSettings) -> JSONResponse:
    version = getattr(jobs, "model_version", None) or model_version_of(settings)
    if jobs.is_ready:
        return JSONResponse({"status": "ok", "model_version": version})
    return JSONResponse({"status": "loading", "model_version": version}, status_code=503)


def model_version_of(settings: Settings) -> str | None:
    """The configured version, else one named by the source (`dummy:tiny-v1.2`, `...-v1p2`)."""
    if settings.model_version:
        return settings.model_version
    name = (settings.model or "").lower().replace("p", ".")
    for version in ("v1.2", "v1.1", "v1.0"):
        if version in name:
            return version
    return None


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(jobs: Jobs) -> Response:
    return Response(generate_latest(jobs.metrics.registry), media_type=CONTENT_TYPE_LATEST)
