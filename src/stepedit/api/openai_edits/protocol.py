"""Wire models of StepFun's `POST /v1/images/edits` (seed 002), field for field."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from stepedit.api.protocol import PreserveOutsideMask, PreserveUnedited, WireModel
from stepedit.request import MAX_SEED

NAME = "openai_edits"
MODEL_ID = "step-1x-edit"
MAX_PROMPT_CHARS = 512
Size = Literal["512x512", "768x768", "1024x1024"]
ResponseFormat = Literal["url", "b64_json"]
FinishReason = Literal["success", "content_filtered"]


class ImageEditForm(WireModel):
    """The multipart form fields besides the `image` file. Unknown fields are accepted (and
    logged): the `openai` client sends `extra_body` entries as more form fields."""

    flavour: ClassVar[str] = NAME
    known_keys: ClassVar[frozenset[str]] = frozenset({"image", "image[]", "mask"})  # files

    model: str = Field(
        description=f"Model name (currently {MODEL_ID}).", json_schema_extra={"enum": [MODEL_ID]}
    )
    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="Text description.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Random seed (0 or omitted uses a random seed)."
    )
    steps: int = Field(28, ge=1, le=100, description="Steps 1-100.")
    cfg_scale: float = Field(6.0, ge=1, le=10, description="Classifier-free guidance scale 1-10.")
    size: Size = Field(
        "512x512",
        description="Approximate output size. A 1:1 input gives exactly this size; any other "
        "input keeps its aspect ratio with an area of about size*size.",
    )
    response_format: ResponseFormat = Field("url", description="b64_json or url.")
    # Issue 4's extras, accepted on every flavour.
    enable_thinking: bool | None = None
    enable_reflection: bool | None = None
    enhance_prompt: bool = False
    # Issue 13's regions, on every flavour (docs/regions.md); the mask is a file part, `mask`.
    preserve_outside_mask: PreserveOutsideMask = True
    preserve_unedited: PreserveUnedited = False


class ImageEditData(BaseModel):
    seed: int
    finish_reason: FinishReason
    url: str | None = None
    b64_json: str | None = None


class ImageEditResponse(BaseModel):
    created: int
    data: list[ImageEditData]
