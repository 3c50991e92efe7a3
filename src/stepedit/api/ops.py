"""Operational endpoints: health and Prometheus metrics, and the HTTP metrics beside the job
metrics (`instrument_http`, installed by `create_app`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepedit.api.deps import AppSettings, Jobs
from stepedit.request import SIZE_LEVELS, VERSIONS, EditRequest

router = APIRouter(tags=["ops"])

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600)


@router.get(
    "/health",
    summary="200 once jobs can run; 503 while loading, after a failed model load, or while a "
    "fleet's database or broker is down",
)
def health(jobs: Jobs, settings: AppSettings) -> JSONResponse:
    """`{"status": "ok"|"loading"|"failed"|"unavailable", "model_version", "reason"?,
    "is_dummy_model", "defaults", ...}`; a fleet API node adds `database`, `broker` and its
    live `workers`."""
    state = jobs.health()
    body = {**state.to_dict(), **model_facts(settings.model, state.model_version)}
    return JSONResponse(body, status_code=200 if state.is_ready else 503)


def model_facts(model: str | None, version: str | None) -> dict[str, Any]:
    """What a client such as the playground fills its form with: whether the model has random
    `dummy:` weights (its edits are noise) and the request defaults of the release it runs, at
    the smallest size for a dummy model so that a first try takes seconds on a CPU."""
    is_dummy = (model or "").startswith("dummy:")
    spec = next((spec for name, spec in VERSIONS.items() if name == version), None)
    fallback = EditRequest(prompt="")
    return {
        "is_dummy_model": is_dummy,
        "defaults": {
            "guidance_scale": spec.default_guidance_scale if spec else fallback.guidance_scale,
            "num_inference_steps": (
                spec.default_num_inference_steps if spec else fallback.num_inference_steps
            ),
            "size_level": SIZE_LEVELS[0] if is_dummy else fallback.size_level,
        },
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(jobs: Jobs) -> Response:
    return Response(generate_latest(jobs.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def instrument_http(app: FastAPI, registry: CollectorRegistry) -> None:
    """Per-route latency and status counters, in `registry` (served by /metrics with the job
    metrics). Routes are labelled by their template (`/v1/jobs/{job_id}`), so ids do not
    multiply series; requests no route matched are labelled "unmatched"."""
    app.add_middleware(HttpMetrics, registry=registry)


class HttpMetrics:
    """ASGI middleware: `stepedit_http_requests_total{method,route,status}` and
    `stepedit_http_request_duration_seconds{method,route}` (to the end of the response)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "stepedit_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "stepedit_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = route_label(scope)
            method = str(scope.get("method", ""))
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - started)


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return str(path) or "/"  # the playground, mounted at "/"
