"""The native job API (CONTRACTS.md): create, list, get, cancel, progress as SSE, the prompt
enhancer alone, and the LoRA adapters a request may name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from stepedit.api.bodies import (
    form_fields,
    is_form,
    media_type,
    read_call_with_upload,
    read_json_object,
    validate_fields,
)
from stepedit.api.deps import AUTHENTICATED, Jobs, Owner
from stepedit.api.protocol import MASK_DESCRIPTION
from stepedit.api.serving import Call, CallDep, EditServing, handler_for
from stepedit.errors import ServiceUnavailable, UnsupportedMediaType

from .adapter import JobCreateAdapter, PromptEnhanceAdapter, to_job_out
from .errors import ERRORS
from .protocol import (
    JobCreate,
    JobCreateJSON,
    JobList,
    JobOut,
    LoraList,
    LoraOut,
    PromptEnhanceIn,
    PromptEnhanceOut,
)

router = APIRouter(prefix="/v1", dependencies=AUTHENTICATED)
CreateHandler = Annotated[
    EditServing[JobCreate, dict[str, Any]], Depends(handler_for(JobCreateAdapter))
]
EnhanceHandler = Annotated[
    EditServing[PromptEnhanceIn, PromptEnhanceOut], Depends(handler_for(PromptEnhanceAdapter))
]

_TEXT_FIELDS = ("prompt", "negative_prompt")


async def read_job_create(request: Request) -> JobCreate:
    """The fields of a multipart form or a JSON object."""
    if is_form(request):
        # Form fields arrive as text; a blank one ("seed": "" from an empty input) means unset,
        # except for the two free-text fields, whose own validation applies.
        fields = {
            key: value
            for key, value in (await form_fields(request)).items()
            if value.strip() or key in _TEXT_FIELDS
        }
        return validate_fields(JobCreate, fields)
    if media_type(request) in ("application/json", ""):
        return validate_fields(JobCreateJSON, await read_json_object(request))
    raise UnsupportedMediaType("send multipart/form-data or application/json", param="content-type")


_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        **JobCreate.model_json_schema()["properties"],
                        "image": {"type": "string", "format": "binary"},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": MASK_DESCRIPTION + " A file part, or a string.",
                        },
                    },
                }
            },
            "application/json": {"schema": JobCreateJSON.model_json_schema()},
        },
    }
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    tags=["jobs"],
    summary="Submit an edit (multipart with an image file, or JSON with an image URL/data URI)",
    responses=ERRORS.responses(400, 401, 413, 415, 422, 429, 503),
    openapi_extra=_CREATE_BODY,
)
async def create_job(
    body: Annotated[JobCreate, Depends(read_job_create)],
    call: Annotated[Call, Depends(read_call_with_upload)],
    handler: CreateHandler,
) -> dict[str, Any]:
    return await handler.edit(body, call)


@router.get(
    "/jobs",
    response_model=JobList,
    tags=["jobs"],
    summary="The caller's jobs, newest first",
    responses=ERRORS.responses(401),
)
async def list_jobs(
    jobs: Jobs, owner: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    return {"object": "list", "data": [to_job_out(view) for view in await jobs.list(owner, limit)]}


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    tags=["jobs"],
    summary="One job",
    responses=ERRORS.responses(401, 404),
)
async def get_job(job_id: str, jobs: Jobs, owner: Owner) -> dict[str, Any]:
    return to_job_out(await jobs.get(job_id, owner))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    tags=["jobs"],
    summary="Cancel a queued or running job",
    responses=ERRORS.responses(401, 404),
)
async def cancel_job(job_id: str, jobs: Jobs, owner: Owner) -> dict[str, Any]:
    return to_job_out(await jobs.cancel(job_id, owner))


@router.get(
    "/jobs/{job_id}/events",
    tags=["jobs"],
    summary="Server-sent events: the JobView on every change, until a terminal state",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS.responses(401, 404)},
)
async def job_events(job_id: str, jobs: Jobs, owner: Owner) -> StreamingResponse:
    await jobs.get(job_id, owner)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        # the view is re-sent on a quiet stream now and then, so proxies keep it open
        async for view in jobs.events(job_id, owner, heartbeat_s=15.0):
            event = "done" if view.is_terminal else "progress"
            yield f"event: {event}\ndata: {json.dumps(to_job_out(view))}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get(
    "/loras",
    response_model=LoraList,
    tags=["loras"],
    summary="The LoRA adapters this server preloaded (--lora), which requests name in `loras`",
    responses=ERRORS.responses(401, 503),
)
async def list_loras(jobs: Jobs) -> LoraList:
    loaded = jobs.loaded_loras()
    if loaded is None:
        raise ServiceUnavailable(
            "the adapters are known once the model has loaded (on this server, or on a live "
            "worker of the fleet)"
        )
    return LoraList(data=[LoraOut(**lora.to_dict()) for lora in loaded])


@router.post(
    "/prompt/enhance",
    response_model=PromptEnhanceOut,
    tags=["prompt"],
    summary="The Prompt Enhancer alone: a vague instruction rewritten, no edit",
    responses=ERRORS.responses(400, 401, 429, 503),
)
async def enhance_prompt(
    body: PromptEnhanceIn, call: CallDep, handler: EnhanceHandler
) -> PromptEnhanceOut:
    return await handler.edit(body, call)
