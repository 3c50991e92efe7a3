"""Wire models of the OpenAI-compatible `POST /v1/images/generations` for
stepfun-ai/step1x-edit (seed 003), field for field."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from stepedit.api.protocol import MaskSource, PreserveOutsideMask, PreserveUnedited, WireModel
from stepedit.request import MAX_IMAGES_PER_REQUEST, MAX_SEED

NAME = "generations"
MODEL_ID = "stepfun-ai/step1x-edit"
ResponseFormat = Literal["url", "b64_json"]


class GenerationRequest(WireModel):
    """Unknown fields are accepted (and logged); the `openai` client sends `extra_body` entries
    (`image`, `negative_prompt`, ...) as top-level JSON fields."""

    flavour: ClassVar[str] = NAME

    prompt: str = Field(description="Prompt word")
    model: str = Field(
        description=f"The model name, here {MODEL_ID}.", json_schema_extra={"enum": [MODEL_ID]}
    )
    image: str = Field(description="Base64 data (data URI or raw) or an http(s) image link.")
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST, description="Number of images, 1-4.")
    strength: float = Field(
        0.8, ge=0, le=1, description="How far the result may depart from the image, 0-1."
    )
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="Random seed; -1 for a random one.")
    steps: int = Field(20, ge=1, le=50, description="Number of inference steps, 1-50.")
    guidance_scale: float = Field(2.5, ge=1, le=10, description="Prompt adherence, 1-10.")
    negative_prompt: str = Field("", description="Content you do not wish to appear.")
    response_format: ResponseFormat = Field("url", description="url or b64_json.")
    # Issue 4's extras, accepted on every flavour.
    enable_thinking: bool | None = None
    enable_reflection: bool | None = None
    enhance_prompt: bool = False
    # Issue 13's regions, on every flavour (docs/regions.md).
    mask: MaskSource = None
    preserve_outside_mask: PreserveOutsideMask = True
    preserve_unedited: PreserveUnedited = False


class GenerationData(BaseModel):
    url: str | None = None
    b64_json: str | None = Field(
        default=None,
        description='The image as a data URI ("data:image/png;base64,..."), as the seed shows',
    )


class GenerationResponse(BaseModel):
    created: int
    data: list[GenerationData]
    usage: dict[str, Any] = Field(default_factory=lambda: {"input_tokens_details": {}})
