"""Operational endpoints: readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stepedit.api.deps import Jobs

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Ready only once the model is loaded")
def health(jobs: Jobs) -> JSONResponse:
    if jobs.is_ready:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "loading"}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(jobs: Jobs) -> Response:
    return Response(generate_latest(jobs.metrics.registry), media_type=CONTENT_TYPE_LATEST)
