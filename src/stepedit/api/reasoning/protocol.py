"""Wire models of the reasoning edit endpoint `POST /v1/image/edit/` (seed 004).

The seed publishes the request fields (image, model, prompt, operation, enable_thinking,
enable_reflection, steps default 50, guidance_scale default 6.0) but not a response; the
response below is stepedit's, designed to say plainly which passes ran. Its operations include
inpaint and outpaint; their inputs are stepedit's own fields, named as the native API names them
(`mask`, `outpaint_padding`, `outpaint_aspect_ratio`; docs/regions.md).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from stepedit.api.protocol import (
    MaskSource,
    OutpaintAspectRatio,
    OutpaintPadding,
    PreserveOutsideMask,
    PreserveUnedited,
    WireModel,
)
from stepedit.request import MAX_SEED

NAME = "reasoning"
MODEL_ID = "step1x-edit"
ResponseFormat = Literal["url", "b64_json"]

# Operations Step1X-Edit does as an instruction edit (the prompt says what to change).
INSTRUCTION_OPERATIONS = ("img2img", "edit", "style_transfer")
# The edit confined to a mask, and the picture extended beyond its borders (docs/regions.md).
INPAINT, OUTPAINT = "inpaint", "outpaint"
OPERATIONS = (*INSTRUCTION_OPERATIONS, INPAINT, OUTPAINT)


class ReasoningEditRequest(WireModel):
    """JSON body, or the same fields as multipart form fields with `image` as a file.
    Unknown fields are accepted (and logged)."""

    flavour: ClassVar[str] = NAME

    model: str = Field(
        MODEL_ID, description=f"The model: {MODEL_ID}.", json_schema_extra={"enum": [MODEL_ID]}
    )
    prompt: str = Field(
        "", description="The edit instruction (outpaint: optional, what the new area shows)."
    )
    image: str | None = Field(
        default=None,
        description="JSON: an http(s) URL, a data URI or raw base64. Multipart: the image file.",
    )
    operation: str = Field(
        "img2img",
        description="img2img (default), edit or style_transfer: an instruction edit. inpaint: "
        "the edit confined to `mask` (required). outpaint: the picture extended by "
        "`outpaint_padding` or to `outpaint_aspect_ratio` (one is required).",
    )
    enable_thinking: bool | None = Field(
        default=None,
        description="Run the MLLM thinking pass. Default: the model's (on for v1.2; v1.0/v1.1 "
        "have no such pass).",
    )
    enable_reflection: bool | None = Field(
        default=None, description="Run the reflection pass. Default: the model's (on for v1.2)."
    )
    steps: int = Field(50, ge=1, le=100, description="Inference steps (default 50).")
    guidance_scale: float = Field(6.0, ge=0, le=20, description="Guidance scale (default 6.0).")
    negative_prompt: str = ""
    seed: int | None = Field(
        default=None, ge=-1, le=MAX_SEED, description="Random seed; -1 or omitted: random."
    )
    response_format: ResponseFormat = "url"
    enhance_prompt: bool = False
    # Issue 13's regions (docs/regions.md). Multipart: the mask may be a file part, `mask`.
    mask: MaskSource = None
    outpaint_padding: OutpaintPadding = None
    outpaint_aspect_ratio: OutpaintAspectRatio = None
    preserve_outside_mask: PreserveOutsideMask = True
    preserve_unedited: PreserveUnedited = False


class ReasoningImage(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    seed: int
    nsfw: bool


class PassReport(BaseModel):
    requested: bool | None = Field(description="As sent; null: the model's default.")
    ran: bool


class ReasoningEditResponse(BaseModel):
    id: str
    object: Literal["image.edit"] = "image.edit"
    created: int
    model: str
    operation: str
    data: list[ReasoningImage]
    seed: int = Field(
        description="The seed actually used (image i used seed + i; the rounds of a reasoning "
        "run continue one random stream from it)."
    )
    prompt: str = Field(description="The instruction as sent.")
    prompt_used: str | None = Field(
        description="The instruction the diffusion model was conditioned on (after thinking)."
    )
    passes: list[str] = Field(
        description='Every pass that ran, in order, e.g. ["diffusion"] or ["thinking", '
        '"diffusion_1", "reflection_1"].'
    )
    thinking: PassReport
    reflection: PassReport
    rounds: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Each reflection round: instruction, seed, verdict (success | retry | failed"
        "), thought, next_instruction, raw answer, score.",
    )
    best_round: int | None = Field(default=None, description="1-based round returned.")
    timings: dict[str, float | None]
    usage: dict[str, int]
