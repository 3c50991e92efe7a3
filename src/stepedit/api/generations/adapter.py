"""Seed 003 wire models <-> EditRequest / JobView."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stepedit.errors import InvalidInput
from stepedit.inputs import DEFAULT_MAX_PROMPT_CHARS, check_prompt
from stepedit.jobs.views import JobView
from stepedit.request import EditRequest

from .protocol import MODEL_ID, GenerationData, GenerationRequest, GenerationResponse

logger = logging.getLogger(__name__)


def to_edit_request(body: GenerationRequest, prompt: str) -> EditRequest:
    """`prompt` is the validated prompt. Seed 003's `strength` is the img2img strength: 1.0
    starts from pure noise, lower values start from the noised source image."""
    if body.model != MODEL_ID:
        raise InvalidInput(
            f"The model {body.model!r} does not exist; use {MODEL_ID!r}.", param="model"
        )
    if body.model_extra:
        logger.info("generations: ignoring unknown fields %s", sorted(body.model_extra))
    return EditRequest(
        prompt=prompt,
        negative_prompt=check_prompt(
            body.negative_prompt,
            DEFAULT_MAX_PROMPT_CHARS,
            param="negative_prompt",
            allow_empty=True,
        ),
        seed=None if body.seed < 0 else body.seed,
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.steps,
        num_images=body.n,
        strength=body.strength,
        enable_thinking=body.enable_thinking,
        enable_reflection=body.enable_reflection,
        enhance_prompt=body.enhance_prompt,
    )


def to_response(
    view: JobView, *, base64_outputs: Sequence[str] | None = None
) -> GenerationResponse:
    """A succeeded job -> the seed's response: `url` items, or (response_format=b64_json) data
    URIs in `b64_json`, the seed's example form. Both keys are always present."""
    data = []
    for index, output in enumerate(view.outputs):
        if base64_outputs is not None:
            media_type = f"image/{output.format}"
            data.append(
                GenerationData(b64_json=f"data:{media_type};base64,{base64_outputs[index]}")
            )
        else:
            data.append(GenerationData(url=output.url))
    return GenerationResponse(created=int(view.created_at.timestamp()), data=data)
