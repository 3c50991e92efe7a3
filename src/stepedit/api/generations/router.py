"""`POST /v1/images/generations` with an image: synchronous, JSON, the seed 003 way."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from stepedit.api.deps import AUTHENTICATED
from stepedit.api.serving import CallDep, EditServing, handler_for

from .adapter import GenerationsAdapter
from .errors import ERRORS
from .protocol import GenerationRequest, GenerationResponse

router = APIRouter(
    prefix="/v1/images/generations", tags=["generations"], dependencies=AUTHENTICATED
)
Handler = Annotated[
    EditServing[GenerationRequest, GenerationResponse], Depends(handler_for(GenerationsAdapter))
]


@router.post(
    "",
    summary="Edit an image (stepfun-ai/step1x-edit, OpenAI-compatible generations)",
    response_model=GenerationResponse,
    responses=ERRORS.responses(400, 401, 413, 429, 503),
)
async def generate(body: GenerationRequest, call: CallDep, handler: Handler) -> GenerationResponse:
    # Seed 003 reports errors with error.param = the request id, which every response carries
    # in X-Request-Id (`stepedit.api.access`).
    return await handler.edit(body, call)
