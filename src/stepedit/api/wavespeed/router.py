"""WaveSpeedAI routes: submit, fetch a prediction, read the webhook secret."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from stepedit.api.deps import AUTHENTICATED, AppSettings, Jobs, Owner
from stepedit.api.serving import CallDep, EditServing, handler_for

from .adapter import WavespeedAdapter, to_response
from .errors import ERRORS
from .protocol import (
    PredictionResponse,
    WavespeedEditRequest,
    WebhookSecretData,
    WebhookSecretResponse,
)

router = APIRouter(prefix="/api/v3", tags=["wavespeed"], dependencies=AUTHENTICATED)
Handler = Annotated[
    EditServing[WavespeedEditRequest, PredictionResponse], Depends(handler_for(WavespeedAdapter))
]


@router.post(
    "/wavespeed-ai/step1x-edit",
    summary="Submit an edit (WaveSpeedAI)",
    response_model=PredictionResponse,
    responses=ERRORS.responses(400, 401, 413, 429, 503),
)
async def submit(
    body: WavespeedEditRequest,
    call: CallDep,
    handler: Handler,
    webhook: Annotated[
        str | None, Query(description="URL POSTed the result object on completion")
    ] = None,
) -> PredictionResponse:
    return await handler.edit(body, replace(call, webhook_url=webhook))


@router.get(
    "/predictions/{prediction_id}/result",
    summary="Get a prediction's result (WaveSpeedAI)",
    response_model=PredictionResponse,
    responses=ERRORS.responses(401, 404),
)
async def get_result(
    prediction_id: str, jobs: Jobs, owner: Owner, settings: AppSettings
) -> PredictionResponse:
    return to_response(await jobs.get(prediction_id, owner), base_url=settings.base_url)


@router.get(
    "/predictions/{prediction_id}",
    summary="Get a prediction (WaveSpeedAI)",
    response_model=PredictionResponse,
    responses=ERRORS.responses(401, 404),
)
async def get_prediction(
    prediction_id: str, jobs: Jobs, owner: Owner, settings: AppSettings
) -> PredictionResponse:
    return await get_result(prediction_id, jobs, owner, settings)


@router.get(
    "/webhook/secret",
    summary="The webhook signing secret (whsec_...)",
    response_model=WebhookSecretResponse,
    responses=ERRORS.responses(401),
)
async def webhook_secret(jobs: Jobs, owner: Owner) -> WebhookSecretResponse:
    secret = await jobs.webhook_secret_for(owner)  # each API key has its own
    return WebhookSecretResponse(data=WebhookSecretData(secret=secret))
