"""`POST /v1/images/generations` with an image: synchronous, JSON, the seed 003 way."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from stepedit.api.deps import AppSettings, Jobs, Owner
from stepedit.api.errors import (
    REQUEST_ID_HEADER,
    Flavour,
    check_job_succeeded,
    error_responses,
    request_id_of,
)
from stepedit.api.outputs import outputs_base64
from stepedit.inputs import (
    check_prompt,
    fetch_policy_from_settings,
    load_image_source,
    max_prompt_chars,
    rules_from_settings,
)

from .adapter import to_edit_request, to_response
from .protocol import GenerationRequest, GenerationResponse

logger = logging.getLogger(__name__)

FLAVOUR: Flavour = "generations"
SYNC_WAIT_S = 600.0

router = APIRouter(prefix="/v1/images", tags=["generations"])


@router.post(
    "/generations",
    summary="Edit an image (stepfun-ai/step1x-edit, OpenAI-compatible generations)",
    response_model=GenerationResponse,
    responses=error_responses(FLAVOUR, 400, 401, 413, 429, 503),
)
async def generate(
    body: GenerationRequest,
    request: Request,
    response: Response,
    jobs: Jobs,
    owner: Owner,
    settings: AppSettings,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> GenerationResponse:
    # Seed 003 reports errors with error.param = the request id; say it on success too.
    response.headers[REQUEST_ID_HEADER] = request_id_of(request)
    prompt = check_prompt(body.prompt, max_prompt_chars(settings))
    edit_request = to_edit_request(body, prompt)
    policy = fetch_policy_from_settings(settings)
    image = await load_image_source(body.image, rules_from_settings(settings), policy)
    view = await jobs.submit(
        edit_request,
        await asyncio.to_thread(image.to_png_bytes),
        owner=owner,
        flavour=FLAVOUR,
        idempotency_key=idempotency_key,
    )
    view = await jobs.wait(view.id, owner, SYNC_WAIT_S)
    check_job_succeeded(view, SYNC_WAIT_S)
    base64_outputs = None
    if body.response_format == "b64_json":
        base64_outputs = await outputs_base64(jobs, view)
    return to_response(view, base64_outputs=base64_outputs)
