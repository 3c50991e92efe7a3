"""WaveSpeedAI routes: submit, fetch a prediction, read the webhook secret.

`enable_base64_output` applies to the submit response (with `enable_sync_mode`, the outputs are
there); `GET .../result` always answers with output URLs, as the request is not re-read there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query

from stepedit.api.deps import AppSettings, Jobs, Owner
from stepedit.api.errors import Flavour, error_responses
from stepedit.api.outputs import outputs_base64
from stepedit.errors import InvalidInput
from stepedit.inputs import (
    check_callback_url,
    check_prompt,
    fetch_policy_from_settings,
    load_image_source,
    max_prompt_chars,
    rules_from_settings,
)
from stepedit.jobs.state import JobStatus

from .adapter import to_edit_request, to_response
from .protocol import (
    PredictionResponse,
    WavespeedEditRequest,
    WebhookSecretData,
    WebhookSecretResponse,
)

logger = logging.getLogger(__name__)

FLAVOUR: Flavour = "wavespeed"
SYNC_WAIT_S = 600.0

router = APIRouter(prefix="/api/v3", tags=["wavespeed"])


@router.post(
    "/wavespeed-ai/step1x-edit",
    summary="Submit an edit (WaveSpeedAI)",
    response_model=PredictionResponse,
    responses=error_responses(FLAVOUR, 400, 401, 413, 429, 503),
)
async def submit(
    body: WavespeedEditRequest,
    jobs: Jobs,
    owner: Owner,
    settings: AppSettings,
    webhook: Annotated[
        str | None, Query(description="URL POSTed the result object on completion")
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> PredictionResponse:
    policy = fetch_policy_from_settings(settings)
    if webhook and body.enable_base64_output:
        raise InvalidInput(
            "enable_base64_output cannot be combined with a webhook.", param="enable_base64_output"
        )
    webhook_url = await check_callback_url(webhook, policy) if webhook else None
    prompt = check_prompt(body.prompt, max_prompt_chars(settings))
    request = to_edit_request(body, prompt)
    image = await load_image_source(body.image, rules_from_settings(settings), policy)
    view = await jobs.submit(
        request,
        await asyncio.to_thread(image.to_png_bytes),
        owner=owner,
        flavour=FLAVOUR,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
    )
    if body.enable_sync_mode:
        view = await jobs.wait(view.id, owner, SYNC_WAIT_S)
    base64_outputs = None
    if body.enable_base64_output and view.status is JobStatus.SUCCEEDED:
        base64_outputs = await outputs_base64(jobs, view)
    return to_response(view, base_url=settings.base_url, base64_outputs=base64_outputs)


@router.get(
    "/predictions/{prediction_id}/result",
    summary="Get a prediction's result (WaveSpeedAI)",
    response_model=PredictionResponse,
    responses=error_responses(FLAVOUR, 401, 404),
)
async def get_result(
    prediction_id: str, jobs: Jobs, owner: Owner, settings: AppSettings
) -> PredictionResponse:
    view = await jobs.get(prediction_id, owner)
    return to_response(view, base_url=settings.base_url)


@router.get(
    "/predictions/{prediction_id}",
    summary="Get a prediction (WaveSpeedAI)",
    response_model=PredictionResponse,
    responses=error_responses(FLAVOUR, 401, 404),
)
async def get_prediction(
    prediction_id: str, jobs: Jobs, owner: Owner, settings: AppSettings
) -> PredictionResponse:
    return await get_result(prediction_id, jobs, owner, settings)


@router.get(
    "/webhook/secret",
    summary="The webhook signing secret (whsec_...)",
    response_model=WebhookSecretResponse,
    responses=error_responses(FLAVOUR, 401),
)
async def webhook_secret(jobs: Jobs, owner: Owner) -> WebhookSecretResponse:
    return WebhookSecretResponse(data=WebhookSecretData(secret=jobs.webhook_secret))
