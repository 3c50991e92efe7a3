"""Wire models of the native job API: `JobCreate` in, `JobOut` out (CONTRACTS.md JobView)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stepedit.request import MAX_IMAGES_PER_REQUEST, MAX_SEED, EditRequest

MAX_PROMPT_CHARS = 2048


class JobCreate(BaseModel):
    """The fields of `EditRequest`, with their ranges. `image` only for JSON bodies."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
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
    output_format: Literal["png", "jpeg", "webp"] = "png"
    webhook_url: str | None = Field(default=None, max_length=2048)
    model: str | None = Field(
        default=None,
        max_length=64,
        description="model version to run, e.g. v1.2 (default: the server's); routes the job "
        "to that version's workers when several serve one fleet",
    )

    @field_validator("size_level", mode="before")
    @classmethod
    def _size_level_from_form(cls, value: object) -> object:
        # multipart fields arrive as text; a Literal of ints does not coerce "512" by itself
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    def to_request(self) -> EditRequest:
        return EditRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            seed=None if self.seed is None or self.seed < 0 else self.seed,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
            size_level=self.size_level,
            output_size=self.output_size,
            num_images=self.num_images,
            strength=self.strength,
            enable_thinking=self.enable_thinking,
            enable_reflection=self.enable_reflection,
            enhance_prompt=self.enhance_prompt,
            output_format=self.output_format,
            model=self.model,
        )


class JobCreateJSON(JobCreate):
    image: str = Field(description="data URI, raw base64 or a public http(s) URL")


class ProgressOut(BaseModel):
    step: int
    total_steps: int
    stage: str


class OutputOut(BaseModel):
    url: str
    seed: int
    nsfw: bool


class ErrorOut(BaseModel):
    code: str
    message: str


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


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]


class PromptEnhanceIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    image: str | None = Field(
        default=None, description="optional: data URI, raw base64 or a public http(s) URL"
    )


class PromptEnhanceOut(BaseModel):
    prompt: str = Field(description="The instruction as sent.")
    enhanced_prompt: str = Field(description="The MLLM's specific rewrite of it.")
