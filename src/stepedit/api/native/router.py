"""The native job API (CONTRACTS.md): create, list, get, cancel, and progress as SSE."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from stepedit.api.deps import AppSettings, Jobs, Owner
from stepedit.api.errors import check_job_succeeded
from stepedit.api.native.schemas import (
    JobCreate,
    JobCreateJSON,
    JobList,
    JobOut,
    PromptEnhanceIn,
    PromptEnhanceOut,
)
from stepedit.errors import InvalidInput, UnsupportedMediaType
from stepedit.inputs import (
    decode_image,
    fetch_policy_from_settings,
    load_image_source,
    rules_from_settings,
)
from stepedit.jobs.service import to_native_dict
from stepedit.request import EditRequest
from stepedit.settings import Settings

logger = logging.getLogger(__name__)

jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
prompt_router = APIRouter(prefix="/v1/prompt", tags=["prompt"])

_TEXT_FIELDS = ("prompt", "negative_prompt")
ENHANCE_WAIT_S = 300.0

_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **JobCreate.model_json_schema()["properties"],
                    },
                }
            },
            "application/json": {"schema": JobCreateJSON.model_json_schema()},
        },
    }
}


@jobs_router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit an edit (multipart with an image file, or JSON with an image URL/data URI)",
    openapi_extra=_CREATE_BODY,
)
async def create_job(
    request: Request,
    settings: AppSettings,
    jobs: Jobs,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    fields, image = await _read_submission(request, settings)
    view = await jobs.submit(
        fields.to_request(),
        image,
        owner=owner,
        flavour="native",
        webhook_url=fields.webhook_url,
        idempotency_key=idempotency_key,
    )
    return to_native_dict(view)


@jobs_router.get("", response_model=JobList, summary="The caller's jobs, newest first")
async def list_jobs(
    jobs: Jobs, owner: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    views = await jobs.list(owner, limit)
    return {"object": "list", "data": [to_native_dict(v) for v in views]}


@jobs_router.get("/{job_id}", response_model=JobOut, summary="One job")
async def get_job(job_id: str, jobs: Jobs, owner: Owner) -> dict[str, Any]:
    return to_native_dict(await jobs.get(job_id, owner))


@jobs_router.post(
    "/{job_id}/cancel", response_model=JobOut, summary="Cancel a queued or running job"
)
async def cancel_job(job_id: str, jobs: Jobs, owner: Owner) -> dict[str, Any]:
    return to_native_dict(await jobs.cancel(job_id, owner))


@jobs_router.get(
    "/{job_id}/events",
    summary="Server-sent events: the JobView on every change, until a terminal state",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(job_id: str, jobs: Jobs, owner: Owner) -> StreamingResponse:
    await jobs.get(job_id, owner)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        # the view is re-sent on a quiet stream now and then, so proxies keep it open
        async for view in jobs.events(job_id, owner, heartbeat_s=15.0):
            event = "done" if view.is_terminal else "progress"
            yield f"event: {event}\ndata: {json.dumps(to_native_dict(view))}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@prompt_router.post(
    "/enhance",
    response_model=PromptEnhanceOut,
    summary="The Prompt Enhancer alone: a vague instruction rewritten, no edit",
)
async def enhance_prompt(
    body: PromptEnhanceIn, settings: AppSettings, jobs: Jobs, owner: Owner
) -> PromptEnhanceOut:
    """Runs through the job queue (the MLLM lives with the worker, in this process or not)."""
    if body.image:
        rules = rules_from_settings(settings)
        decoded = await load_image_source(body.image, rules, fetch_policy_from_settings(settings))
        image = await asyncio.to_thread(decoded.to_png_bytes)
    else:
        image = _placeholder_png()
    request = EditRequest(
        prompt=body.prompt, enhance_only=True, enhance_image=body.image is not None
    )
    view = await jobs.submit(request, image, owner=owner, flavour="native")
    view = await jobs.wait(view.id, owner, ENHANCE_WAIT_S)
    check_job_succeeded(view, ENHANCE_WAIT_S)
    return PromptEnhanceOut(prompt=body.prompt, enhanced_prompt=view.prompt_used or body.prompt)


def _placeholder_png() -> bytes:
    """A stored image for an enhance job sent without one (never shown to the MLLM)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _read_submission(request: Request, settings: Settings) -> tuple[JobCreate, bytes]:
    content_type = request.headers.get("content-type", "")
    rules = rules_from_settings(settings)
    if content_type.startswith("multipart/form-data") or content_type.startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form(max_part_size=settings.max_upload_bytes + 1024)
        # Form fields arrive as text; a blank one ("seed": "" from an empty input) means unset,
        # except for the two free-text fields, whose own validation applies.
        raw = {
            k: v
            for k, v in form.items()
            if k != "image" and isinstance(v, str) and (v.strip() or k in _TEXT_FIELDS)
        }
        fields = _validate(JobCreate, raw)
        upload = form.get("image")
        if isinstance(upload, UploadFile):
            data = await upload.read(settings.max_upload_bytes + 1)
            decoded = await asyncio.to_thread(decode_image, data, rules)
        elif isinstance(upload, str) and upload:
            decoded = await load_image_source(upload, rules, fetch_policy_from_settings(settings))
        else:
            raise InvalidInput("image: a file or an image URL is required", param="image")
    elif content_type.startswith("application/json") or not content_type:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        fields = json_fields = _validate(JobCreateJSON, body)
        assert isinstance(json_fields, JobCreateJSON)
        decoded = await load_image_source(
            json_fields.image, rules, fetch_policy_from_settings(settings)
        )
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data or application/json", param="content-type"
        )
    return fields, await asyncio.to_thread(decoded.to_png_bytes)


def _validate(model: type[JobCreate], raw: dict[str, Any]) -> JobCreate:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidInput(f"{param}: {first['msg']}", param=param) from None


router = APIRouter()
router.include_router(jobs_router)
router.include_router(prompt_router)
