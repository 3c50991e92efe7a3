"""Wire models of the native job API: `JobCreate` in, `JobOut` out (CONTRACTS.md JobView).

The fields are EditRequest's, under its own names, with their ranges; the mask travels beside
them as the image does (a file part, or a string).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from stepedit.api.protocol import (
    MaskSource,
    OutpaintAspectRatio,
    OutpaintPadding,
    PreserveOutsideMask,
    PreserveUnedited,
    WireModel,
)
from stepedit.request import (
    LORA_NAME_PATTERN,
    MAX_IMAGES_PER_REQUEST,
    MAX_LORA_SCALE,
    MAX_LORAS_PER_REQUEST,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    CfgRescale,
)

NAME = "native"


class LoraIn(BaseModel):
    """One preloaded adapter, by name (never a path or a URL), and its scale."""

    name: str = Field(pattern=f"^{LORA_NAME_PATTERN}$", description="As GET /v1/loras lists it")
    scale: float = Field(default=1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)


def _loras_from_text(value: object) -> object:
    """A multipart field carries the list as JSON text."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError('expected a JSON list such as [{"name": "hands", "scale": 0.8}]') from None


class JobCreate(WireModel):
    """A job as multipart form fields (`image`: the file, or a string as in JSON)."""

    flavour: ClassVar[str] = NAME

    prompt: str = Field(
        default="",
        max_length=MAX_PROMPT_CHARS,
        description="The edit instruction; required, except with an outpaint (what the new "
        "area shows; a default instruction otherwise)",
    )
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    image: str | None = Field(
        default=None, description="data URI, raw base64 or a public http(s) URL"
    )
    seed: int | None = Field(default=None, ge=-1, le=MAX_SEED, description="-1 or null: random")
    guidance_scale: float = Field(default=6.0, ge=0.0, le=20.0)
    num_inference_steps: int = Field(default=28, ge=1, le=100)
    size_level: Literal[512, 768, 1024] = 1024
    output_size: Literal["input", "working"] = "input"
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    strength: float = Field(default=1.0, ge=0.0, le=1.0)
    enable_thinking: bool | None = None
    enable_reflection: bool | None = None
    enhance_prompt: bool = False
    cfg_rescale: CfgRescale | None = Field(
        default=None,
        description="When the guidance term is norm-rescaled: official (default: as the "
        "release's own code does), every_step, or never (plain CFG)",
    )
    output_format: Literal["png", "jpeg", "webp"] = "png"
    webhook_url: str | None = Field(default=None, max_length=2048)
    model: str | None = Field(
        default=None,
        max_length=64,
        description="model version to run, e.g. v1.2 (default: the server's); routes the job "
        "to that version's workers when several serve one fleet",
    )
    # Regions (docs/regions.md): the mask as the image (a file part, or a string).
    mask: MaskSource = None
    preserve_outside_mask: PreserveOutsideMask = True
    preserve_unedited: PreserveUnedited = False
    outpaint_padding: OutpaintPadding = None
    outpaint_aspect_ratio: OutpaintAspectRatio = None
    loras: Annotated[list[LoraIn] | None, BeforeValidator(_loras_from_text)] = Field(
        default=None,
        max_length=MAX_LORAS_PER_REQUEST,
        description="LoRA adapters the server preloaded (GET /v1/loras), by name, with a scale "
        "each; omitted: the server's default set; []: none. Multipart: the list as JSON text.",
    )

    @field_validator("size_level", mode="before")
    @classmethod
    def _size_level_from_form(cls, value: object) -> object:
        # multipart fields arrive as text; a Literal of ints does not coerce "512" by itself
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value


class JobCreateJSON(JobCreate):
    """A job as a JSON object: the image is a string."""

    image: str = Field(description="data URI, raw base64 or a public http(s) URL")


class LoraOut(BaseModel):
    """A preloaded LoRA adapter (never its file's path)."""

    name: str
    format: Literal["official", "diffusers"]
    rank: int = Field(description="The largest rank of its low-rank changes")
    targets: int = Field(description="How many Linear layers of the DiT it changes")
    default_scale: float = Field(
        description="The scale applied to requests that name no adapters (0: only on request)"
    )
    merged: bool = Field(
        description="Merged into the weights (the default set); otherwise run as a low-rank "
        "path for the requests that select it"
    )


class LoraList(BaseModel):
    object: Literal["list"] = "list"
    data: list[LoraOut]


class ProgressOut(BaseModel):
    step: int
    total_steps: int
    stage: str


class OutputOut(BaseModel):
    url: str
    seed: int
    nsfw: bool
    region_mask_url: str | None = Field(
        default=None,
        description="Where this output may have changed (a grey PNG, white = changed), when the "
        "edit had a region: a mask, an outpaint, or preserve_unedited's estimate",
    )


class ErrorOut(BaseModel):
    code: str
    message: str


class WebhookOut(BaseModel):
    """Where the job's webhook delivery stands (`null` without a webhook)."""

    state: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    last_attempt_at: str | None
    last_status: int | None = Field(description="The receiver's HTTP status, if it answered")
    last_error: str | None = Field(description="Why the last attempt failed")
    next_attempt_at: str | None = Field(description="While pending: when it is tried (again)")


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "processing", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: dict[str, Any]
    seed: int
    progress: ProgressOut
    outputs: list[OutputOut]
    prompt_used: str | None
    passes: list[str]
    reasoning: dict[str, Any] | None = Field(
        default=None,
        description="v1.2 reasoning: original_prompt, prompt, best_round, rounds with verdicts",
    )
    error: ErrorOut | None
    timings: dict[str, float | None]
    webhook: WebhookOut | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]


class PromptEnhanceIn(WireModel):
    flavour: ClassVar[str] = NAME

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    image: str | None = Field(
        default=None, description="optional: data URI, raw base64 or a public http(s) URL"
    )


class PromptEnhanceOut(BaseModel):
    prompt: str = Field(description="The instruction as sent.")
    enhanced_prompt: str = Field(description="The MLLM's specific rewrite of it.")
