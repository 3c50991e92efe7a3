"""`WireModel`: the base of every flavour's request models (as vLLM's `OpenAIBaseModel`), and
the field types flavours share (the region fields of issue 13).

The providers we imitate accept fields they do not know (the `openai` client sends
`extra_body` entries as more fields), so ours do too: unknown fields are ignored, and logged
once, here, with the flavour's name, whether they came as JSON or as multipart form fields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Protocol, Self, TypedDict

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    model_validator,
)

from stepedit.errors import InvalidInput
from stepedit.regions import parse_outpaint

logger = logging.getLogger(__name__)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    flavour: ClassVar[str]  # the flavour the model belongs to, named in the log
    # Keys that are no field but not unknown either (a multipart file read apart, e.g. "image").
    known_keys: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="wrap")
    @classmethod
    def _log_unknown_fields(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        model = handler(data)
        if isinstance(data, Mapping):
            unknown = sorted(str(key) for key in data if key not in cls.field_keys())
            if unknown:
                logger.info("%s: ignoring unknown fields %s", cls.flavour, unknown)
        return model

    @classmethod
    def field_keys(cls) -> frozenset[str]:
        names = {name for name in cls.model_fields}
        aliases = {f.alias for f in cls.model_fields.values() if f.alias}
        return frozenset(names | aliases | cls.known_keys)


# ---------------------------------------------------------------- regions (docs/regions.md)
# Issue 13's fields, under one name and meaning on every flavour; how the mask travels (a
# string or a multipart file) is each flavour's own.

MASK_DESCRIPTION = (
    "Where the edit may change the image: white = may change, black = keep, grey = partly "
    "(local strength). A grayscale image, or one whose alpha channel is not opaque "
    "(transparent = may change, as OpenAI's image edits). Of the image's size, or of its aspect "
    "ratio (within 1%) to be resized; PNG, JPEG or WebP, checked as images are."
)
MaskSource = Annotated[
    str | None,
    Field(description=MASK_DESCRIPTION + " An http(s) URL, a data URI or raw base64."),
]
PreserveOutsideMask = Annotated[
    bool,
    Field(
        description="With a mask or an outpaint: the pixels outside it are the source's, bit "
        "for bit (a feathered seam inside it). false: only the sampling is confined."
    ),
]
PreserveUnedited = Annotated[
    bool,
    Field(
        description="Without a mask: estimate where the edit changes the image after the first "
        "steps and keep everything else exactly as the source (the native job record reports "
        "the estimated region as region_mask_url)."
    ),
]


def _padding_from_text(value: object) -> object:
    """Form fields and hand-written JSON: "0,0,256,0" or "right=256" (`regions.parse_outpaint`)."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        parsed = parse_outpaint(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    if "outpaint_padding" not in parsed:
        raise ValueError("an aspect ratio goes in outpaint_aspect_ratio")
    return parsed["outpaint_padding"]


def _ratio_from_text(value: object) -> object:
    """ "16:9" as well as a number."""
    if not isinstance(value, str):
        return value
    if ":" not in value:
        return value.strip() or None  # a number as text: pydantic reads it
    try:
        parsed = parse_outpaint(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    return parsed["outpaint_aspect_ratio"]


OutpaintPadding = Annotated[
    tuple[int, int, int, int] | None,
    BeforeValidator(_padding_from_text),
    Field(
        description="Outpaint: pixels added on each side, [left, top, right, bottom] (each "
        '0-4096), or as text: "0,0,256,0", "right=256,bottom=64". The new area is the mask.'
    ),
]
OutpaintAspectRatio = Annotated[
    float | None,
    BeforeValidator(_ratio_from_text),
    Field(
        description='Outpaint: a target width / height in [1/4, 4], e.g. 1.7778 or "16:9"; the '
        "short axis grows, evenly on both sides. Not with outpaint_padding."
    ),
]


class SharedOptions(TypedDict):
    """EditRequest's fields that every flavour takes under one name and meaning (issue 4's
    passes, issue 13's region switches), as `shared_options` maps them."""

    enable_thinking: bool | None
    enable_reflection: bool | None
    enhance_prompt: bool
    preserve_outside_mask: bool
    preserve_unedited: bool


class HasSharedOptions(Protocol):
    enable_thinking: bool | None
    enable_reflection: bool | None
    enhance_prompt: bool
    preserve_outside_mask: bool
    preserve_unedited: bool


def shared_options(body: HasSharedOptions) -> SharedOptions:
    return SharedOptions(
        enable_thinking=body.enable_thinking,
        enable_reflection=body.enable_reflection,
        enhance_prompt=body.enhance_prompt,
        preserve_outside_mask=body.preserve_outside_mask,
        preserve_unedited=body.preserve_unedited,
    )


def to_request_seed(seed: int | None) -> int | None:
    """EditRequest's seed from a flavour's: a negative one (the providers' -1) or none asks for
    a random seed."""
    return None if seed is None or seed < 0 else seed
