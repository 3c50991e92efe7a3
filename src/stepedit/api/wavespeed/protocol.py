"""Wire models of the WaveSpeedAI step1x-edit API, field for field as seeds 000/001 publish them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from stepedit.api.protocol import MaskSource, PreserveOutsideMask, PreserveUnedited, WireModel
from stepedit.request import MAX_SEED

NAME = "wavespeed"
MODEL_ID = "wavespeed-ai/step1x-edit"
PredictionStatus = Literal["created", "processing", "completed", "failed"]


class WavespeedEditRequest(WireModel):
    """`POST /api/v3/wavespeed-ai/step1x-edit`. Unknown fields are accepted (and logged)."""

    flavour: ClassVar[str] = NAME

    prompt: str = Field(description="The positive prompt for the generation.")
    image: str = Field(
        description="The image to edit: a public URL, a data URI or raw base64. Needs to match "
        "the dimensions of the mask, when one is sent."
    )
    negative_prompt: str = Field("", description="The negative prompt for the generation.")
    seed: int | None = Field(
        -1, ge=-1, le=MAX_SEED, description="The random seed; -1 (or empty) for a random one."
    )
    guidance_scale: float = Field(4.0, ge=0, le=20, description="The guidance scale.")
    num_inference_steps: int = Field(30, ge=1, le=50, description="Inference steps.")
    enable_sync_mode: bool = Field(
        False, description="Wait for the result and return it in this response."
    )
    enable_base64_output: bool = Field(
        False, description="Return outputs as base64 strings instead of URLs (not with webhooks)."
    )
    # Issue 4's extras, accepted on every flavour.
    enable_thinking: bool | None = Field(None, description="v1.2: run the thinking pass.")
    enable_reflection: bool | None = Field(None, description="v1.2: run the reflection pass.")
    enhance_prompt: bool = Field(False, description="Rewrite the prompt with the prompt enhancer.")
    # Issue 13's regions, on every flavour (docs/regions.md).
    mask: MaskSource = None
    preserve_outside_mask: PreserveOutsideMask = True
    preserve_unedited: PreserveUnedited = False


class PredictionUrls(BaseModel):
    get: str


class PredictionTimings(BaseModel):
    inference: int = Field(description="Inference time in milliseconds")


class Prediction(BaseModel):
    id: str
    model: str = MODEL_ID
    outputs: list[str] = Field(description="URLs (or base64) of the outputs; empty until completed")
    urls: PredictionUrls
    has_nsfw_contents: list[bool]
    status: PredictionStatus
    created_at: str = Field(description='ISO timestamp, e.g. "2023-04-01T12:34:56.789Z"')
    error: str = ""
    timings: PredictionTimings


class PredictionResponse(BaseModel):
    code: int = 200
    message: str = "success"
    data: Prediction


class WebhookSecretData(BaseModel):
    secret: str


class WebhookSecretResponse(BaseModel):
    code: int = 200
    message: str = "success"
    data: WebhookSecretData
